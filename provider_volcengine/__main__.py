"""`python -m provider_volcengine`."""

from pathlib import Path

from aitask_common.provider import run_provider
from provider_volcengine.servicer import VolcengineServicer
from provider_volcengine.settings import VolcengineSettings

run_provider("provider_volcengine", VolcengineSettings, VolcengineServicer, Path(__file__).with_name("catalogue.toml"))
