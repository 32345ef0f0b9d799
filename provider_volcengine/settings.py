"""Volcengine provider settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from aitask_common.provider import ProviderSettings


class VolcengineSettings(ProviderSettings):
    """Environment of `python -m provider_volcengine`."""

    metrics_port: int = Field(default=9466, ge=0, le=65535)
    """Port of /metrics (0: off)."""

    port: int = Field(default=50061, ge=0, le=65535, validation_alias=AliasChoices("VOLCENGINE_PORT", "PORT"))
    """Port of the provider's gRPC server."""
    ark_api_key: str = ""
    """Ark (Doubao) API key."""
    ark_base_url: str = "https://ark.cn-beijing.volces.com/api/v3"
    """Ark's API base URL."""
    volcengine_access_key: str = ""
    """Access key of the visual API (Jimeng), which signs requests with AK/SK."""
    volcengine_secret_key: str = ""
    """Secret key of the visual API."""
    volcengine_visual_url: str = "https://visual.volcengineapi.com"
    """Scheme and host of the visual API; the simulator is plain http on loopback."""
    visual_concurrency: int = Field(default=64, ge=1)
    """Concurrent visual API calls (its SDK is synchronous: one thread each)."""
