"""Typed settings read once at start-up from the environment (and `.env`).

Every service subclasses `ServiceSettings`; a bad value stops the process with
pydantic's message, which names the variable.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    """Where the process runs; development relaxes auth and says so."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class ServiceSettings(BaseSettings):
    """Settings every aitask process shares."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    environment: Environment = Environment.DEVELOPMENT
    log_level: str = Field(default="INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    log_keep_days: int = Field(default=7, ge=1)
    log_dir: str = "logs"
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    mongo_database: str = "aitask"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Timeout for a single Redis command: a dead Redis must fail a request, not hang it.
    redis_socket_timeout: float = Field(default=5.0, gt=0)
    # Deadline of one upstream AI call, in seconds.
    ai_timeout: float = Field(default=120.0, gt=0)
    # Seconds a stopping server lets in-flight RPCs finish.
    shutdown_grace: float = Field(default=10.0, ge=0)
    # Prometheus /metrics; each service has its own default port, 0 turns it off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(settings_class: type[SettingsT]) -> SettingsT:
    """Build the settings or exit with a message naming each bad variable."""
    try:
        return settings_class()
    except ValidationError as error:
        lines = [f"invalid configuration for {settings_class.__name__}:"]
        for problem in error.errors():
            variable = "_".join(str(part) for part in problem["loc"]).upper()
            lines.append(f"  {variable}: {problem['msg']} (got {problem.get('input')!r})")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
