"""Volcengine provider settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from aitask_common.provider import ProviderSettings


class VolcengineSettings(ProviderSettings):
    """Environment of `python -m provider_volcengine`."""

    metrics_port: int = Field(default=9466, ge=0, le=65535)

    port: int = Field(default=50061, ge=0, le=65535, validation_alias=AliasChoices("VOLCENGINE_PORT", "PORT"))
    ark_api_key: str = ""
    ark_base_url: str = "https://ark.cn-beijing.volces.com/api/v3"
    volcengine_access_key: str = ""
    volcengine_secret_key: str = ""
    # Scheme and host of the visual API; the simulator is plain http on loopback.
    volcengine_visual_url: str = "https://visual.volcengineapi.com"
    # Concurrent visual API calls (its SDK is synchronous: one thread each).
    visual_concurrency: int = Field(default=64, ge=1)
