"""OpenAI provider settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from aitask_common.provider import ProviderSettings


class OpenAISettings(ProviderSettings):
    """Environment of `python -m provider_openai`."""

    metrics_port: int = Field(default=9467, ge=0, le=65535)
    """Port of /metrics (0: off)."""

    port: int = Field(default=50062, ge=0, le=65535, validation_alias=AliasChoices("OPENAI_PROVIDER_PORT", "PORT"))
    """Port of the provider's gRPC server."""
    openai_api_key: str = ""
    """OpenAI API key (`make run` uses the simulator's when no vendor key is set)."""
    openai_base_url: str = "https://api.openai.com/v1"
    """OpenAI's API base URL."""
