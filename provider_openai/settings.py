"""OpenAI provider settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from aitask_common.provider import ProviderSettings


class OpenAISettings(ProviderSettings):
    """Environment of `python -m provider_openai`."""

    metrics_port: int = Field(default=9467, ge=0, le=65535)

    port: int = Field(default=50062, ge=0, le=65535, validation_alias=AliasChoices("OPENAI_PROVIDER_PORT", "PORT"))
    openai_api_key: str = ""
    openai_base_url: str = "https://api.openai.com/v1"
