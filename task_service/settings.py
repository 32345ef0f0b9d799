"""Task service settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from aitask_common.settings import ServiceSettings


class TaskServiceSettings(ServiceSettings):
    """Environment of `python -m task_service`."""

    metrics_port: int = Field(default=9464, ge=0, le=65535)

    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("TASK_SERVICE_HOST", "HOST"))
    port: int = Field(default=50051, ge=0, le=65535, validation_alias=AliasChoices("TASK_SERVICE_PORT", "PORT"))
    # Hard cap on prompt length whatever a model's catalogue allows.
    max_prompt_chars: int = Field(default=4000, ge=1)
    list_limit_default: int = Field(default=20, ge=1)
    list_limit_max: int = Field(default=100, ge=1)
    # How often the provider catalogues are re-read from the registry.
    catalogue_refresh_seconds: float = Field(default=2.0, gt=0)
