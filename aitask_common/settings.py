"""Typed settings read once at start-up from the environment (and `.env`).

Every service subclasses `ServiceSettings`; a bad value stops the process with
pydantic's message, which names the variable. The operator tools (queue admin,
API-key CLI) also read `.local/stack.env`, where `make run` writes the local
stack's URLs, so they find that stack with no variables set; services never do.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from aitask_common import queue_shards
from aitask_common.queue_shards import QueueShards


class Environment(StrEnum):
    """Where the process runs; development relaxes auth and says so."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


DEVELOPMENT_STARTING_CREDITS = 1_000_000


class ServiceSettings(BaseSettings):
    """Settings every aitask process shares."""

    # Field docstrings are the settings' descriptions: `env.example` and the README's table are made from them.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, use_attribute_docstrings=True
    )

    environment: Environment = Environment.DEVELOPMENT
    """development, test or production; any but development requires API keys."""
    log_level: str = Field(default="INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    """DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    log_keep_days: int = Field(default=7, ge=1)
    """Daily log files older than this are removed."""
    log_dir: str = "logs"
    """Folder of the daily log files (beside the JSON lines on stdout)."""
    log_file: bool = True
    """Also write the daily files under LOG_DIR; `off` in containers, where stdout is collected."""
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    """MongoDB (or FerretDB) connection string."""
    mongo_database: str = "aitask"
    """Database holding the tasks and API keys."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis: the queue, leases, the registry, limits and caches."""
    redis_socket_timeout: float = Field(default=5.0, gt=0)
    """Timeout of a single Redis command: a dead Redis must fail a request, not hang it."""
    redis_cluster_urls: str = ""
    """A Redis Cluster's nodes (comma-separated `redis://host:port`; any one live node finds the others). Set, every
    process runs on the cluster and REDIS_URL is not used; see the README's "Queue shards"."""
    queue_shards: int = Field(default=1, ge=1, le=1024)
    """Queue shards: each task's jobs go to one of this many RQ namespaces (by task id), each under its own Redis hash
    tag, so a Redis Cluster spreads them over its masters. Every process must be given the same number; see the
    README's "Queue shards" for changing it."""
    model_fallbacks: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "volcengine/doubao-seedream-3-0-t2i-250415": ["volcengine/jimeng_high_aes_general_v21_L"],
        }
    )
    """Catalogue fallbacks (a JSON object): "provider/model" -> the same-modality "provider/model"s a task may run on,
    in order, when its create sets allow_fallback and the model's circuit breaker is open or its retries are spent;
    ListModels shows them. Synchronous (image, text) models only; a fallback whose parameters cannot be mapped (a
    size of no aspect ratio it offers) is skipped."""
    ai_timeout: float = Field(default=120.0, gt=0)
    """Deadline of one upstream AI call, in seconds."""
    shutdown_grace: float = Field(default=10.0, ge=0)
    """Seconds a stopping server lets in-flight RPCs finish."""
    metrics_host: str = "127.0.0.1"
    """Address of the Prometheus /metrics server."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of /metrics; each service has its own default, 0 turns it off."""
    otel_exporter_otlp_endpoint: str = ""
    """OTLP/gRPC endpoint of a trace collector (`http://jaeger:4317`); empty: no traces. The SDK's other OTEL_*
    variables (OTEL_TRACES_SAMPLER, OTEL_BSP_SCHEDULE_DELAY, ...) apply too."""
    starting_credits: int | None = Field(default=None, ge=0)
    """Credits each user's ledger starts with (a grant, its first entry); unset: 1,000,000 when
    ENVIRONMENT=development, else 0 (credits then come from an admin's grant)."""

    @property
    def ledger_starting_credits(self) -> int:
        if self.starting_credits is not None:
            return self.starting_credits
        return DEVELOPMENT_STARTING_CREDITS if self.environment is Environment.DEVELOPMENT else 0


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)

# Written by `make run` (devstack) relative to the checkout: REDIS_URL, MONGO_URL and the gateway's addresses.
LOCAL_STACK_ENV = Path(".local") / "stack.env"


def load_settings(settings_class: type[SettingsT], *, local_stack: bool = False) -> SettingsT:
    """Build the settings or exit with a message naming each bad variable.

    `local_stack` is for the operator CLIs alone: `.local/stack.env` (relative to the working directory,
    as `.env` is) fills what the environment does not set, ahead of `.env`; a missing file is ignored.
    """
    try:
        if local_stack:
            configured = settings_class.model_config.get("env_file")
            files = [configured] if isinstance(configured, str | Path) else list(configured or [])
            settings = settings_class(_env_file=(*files, LOCAL_STACK_ENV))  # type: ignore[call-arg]  # pydantic-settings
        else:
            settings = settings_class()
    except ValidationError as error:
        lines = [f"invalid configuration for {settings_class.__name__}:"]
        for problem in error.errors():
            variable = "_".join(str(part) for part in problem["loc"]).upper()
            # A check of several variables together names them in its message.
            lines.append(
                f"  {variable}: {problem['msg']} (got {problem.get('input')!r})" if variable else f"  {problem['msg']}"
            )
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
    # Every process that reads the settings names keys and queues by the same shard layout.
    queue_shards.configure(QueueShards.layout(settings.queue_shards, cluster=bool(settings.redis_cluster_urls)))
    return settings
