"""OpenAI-compatible door settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from aitask_common.settings import ServiceSettings

# The task service answers a create or a read after at most this long (task_service.prefer.MAX_WAIT_SECONDS):
# a longer wait is several of them in a row.
TASK_SERVICE_MAX_WAIT_SECONDS = 60


class OpenAIDoorSettings(ServiceSettings):
    """Environment of `python -m openai_door`."""

    metrics_port: int = Field(default=9469, ge=0, le=65535)
    """Port of /metrics (0: off)."""

    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("OPENAI_COMPAT_HOST", "HOST"))
    """Address the door's HTTP server binds."""
    port: int = Field(default=8090, ge=0, le=65535, validation_alias=AliasChoices("OPENAI_COMPAT_PORT", "PORT"))
    """Port of the door's HTTP server (Envoy sends `/v1/` here)."""
    openai_compat_task_service: str = "127.0.0.1:50051"
    """gRPC target of the task service (`host:port`, `dns:///name:port` or `ipv4:a:p,b:p`), balanced
    round-robin over the addresses it resolves to."""
    openai_compat_outputs_url: str = "http://127.0.0.1:50055"
    """Base URL of the task services' output servers (their OUTPUT_HTTP_PORT), where the door reads a video's
    stored copy by its signed link: inside the cluster, never through the public edge."""
    openai_compat_wait_seconds: int = Field(default=120, ge=1)
    """How long an image or chat request waits for its task before answering a timeout error that names the
    task (the task goes on; read it at /api/v1/ai/task/result/{task_id}). Envoy's /v1/ route allows 300 s."""
    openai_compat_development_user_id: str = "user-1"
    """The user a request acts for when authentication is off (ENVIRONMENT=development) and it names none in
    OpenAI's `user` field; with keys, a user key acts for its own user."""
    openai_compat_retry_key_seconds: int = Field(default=3600, ge=1)
    """How long the door remembers the idempotency key it made for a request without one, so that the SDK's
    retries of that request (`x-stainless-retry-count` above 0) reach the same task instead of a second one."""
