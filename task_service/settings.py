"""Task service settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from aitask_common.output_settings import OutputSettings
from aitask_common.settings import Environment


class TaskServiceSettings(OutputSettings):
    """Environment of `python -m task_service`."""

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Port of /metrics (0: off)."""

    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("TASK_SERVICE_HOST", "HOST"))
    """Address the gRPC server binds."""
    port: int = Field(default=50051, ge=0, le=65535, validation_alias=AliasChoices("TASK_SERVICE_PORT", "PORT"))
    """Port of the gRPC server (Envoy's upstream)."""
    output_http_port: int = Field(default=50055, ge=0, le=65535)
    """Port of the HTTP server of output links (`GET /api/v1/ai/task/{task_id}/output`, Envoy's second upstream),
    on HOST."""
    max_prompt_chars: int = Field(default=4000, ge=1)
    """Hard cap on prompt length whatever a model's catalogue allows."""
    billing_enabled: bool = True
    """Reserve each create's price in the credit ledger (402 when short); `false` accepts every create free (the
    ledger's reads and the settlement of tasks already reserved go on)."""
    list_limit_default: int = Field(default=20, ge=1)
    """Tasks per list page when the client gives no limit."""
    list_limit_max: int = Field(default=100, ge=1)
    """Largest list page a client may ask for."""
    catalogue_refresh_seconds: float = Field(default=2.0, gt=0)
    """How often the provider catalogues are re-read from the registry."""
    api_key_cache_seconds: float = Field(default=30.0, ge=0)
    """How long a verified (or rejected) API key is trusted without asking MongoDB again: a revoked key keeps
    working for at most this long."""
    rate_limit_requests: int = Field(default=600, ge=0)
    """Requests one API key may make per window (a key's own rate limit overrides it); 0 turns the limit off."""
    rate_limit_window_seconds: int = Field(default=60, ge=1)
    """The rate limit's window."""
    max_inflight_tasks_per_user: int = Field(default=100, ge=0)
    """Tasks one user may have pending or processing at once; 0 turns the cap off."""
    fair_share_depth: int = Field(default=2, ge=0)
    """Fair share within a priority: at most this many of one user's new tasks wait in the priority's queue at a
    time; the rest wait in the user's backlog and are enqueued one by one as workers pick the user's tasks up, so
    another user's task waits behind at most this many of each busy user's, not behind their whole backlog
    (aitask_common/fair_share.py). 0 turns it off: first come, first served."""
    result_cache_seconds: int = Field(default=300, ge=0)
    """How long a final task result (or a deleted task's tombstone) stays in Redis; 0 turns the cache off. Redis
    holds every final result first read in this window: its memory grows with the rate times this (deploy/CAPACITY.md).
    Replicas sharing a Redis must agree: one with the cache off leaves no tombstone when it deletes."""
    result_cache_max_bytes: int = Field(default=65536, ge=0)
    """Larger serialized results (big base64 images) are always read from MongoDB."""

    @property
    def auth_required(self) -> bool:
        """API keys are required everywhere but on a developer's machine (ENVIRONMENT=development)."""
        return self.environment is not Environment.DEVELOPMENT
