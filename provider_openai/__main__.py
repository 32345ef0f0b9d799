"""`python -m provider_openai`."""

from pathlib import Path

from aitask_common.provider import run_provider
from provider_openai.servicer import OpenAIServicer
from provider_openai.settings import OpenAISettings

run_provider("provider_openai", OpenAISettings, OpenAIServicer, Path(__file__).with_name("catalogue.toml"))
