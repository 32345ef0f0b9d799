"""`python -m tests.e2e.provider_openai_videos`: provider_openai's code with a catalogue that still serves a Sora
video model, under a provider name of its own. The gateway's openai catalogue lists Sora as retired (never
served), but the simulator serves sora-2 (in grace) and reports progress as the Videos API does: this is how
the tests see a running video's progress."""

from pathlib import Path

from aitask_common.provider import run_provider
from provider_openai.servicer import OpenAIServicer
from provider_openai.settings import OpenAISettings

run_provider("provider_openai_videos", OpenAISettings, OpenAIServicer, Path(__file__).with_name("catalogue.toml"))
