"""Dispatcher settings."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from aitask_common.settings import ServiceSettings


class DispatcherSettings(ServiceSettings):
    """Environment of `python -m dispatcher_service`."""

    metrics_port: int = Field(default=9465, ge=0, le=65535)

    worker_concurrency: int = Field(default=4, ge=1, validation_alias=AliasChoices("WORKER_CONCURRENCY", "WORKERS"))
    # Upstream attempts per task before a retryable error becomes final.
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=60.0, gt=0)
    # How long a task waits, pending, for a live instance of its provider before failing.
    provider_wait_seconds: float = Field(default=300.0, ge=0)
    provider_recheck_seconds: float = Field(default=2.0, gt=0)
    # Async (video) jobs: first poll after this, then backoff up to poll_max_seconds.
    poll_initial_seconds: float = Field(default=1.0, gt=0)
    poll_max_seconds: float = Field(default=2.5, gt=0)
    # Give up on an upstream job that has not finished after this long.
    poll_give_up_seconds: float = Field(default=3600.0, gt=0)
    # Ownership lease on a task while a worker holds it; renewed while working.
    lease_seconds: float = Field(default=30.0, gt=1)
    # Reconciler: how often it looks, how long a task must be quiet before it counts as
    # stuck, and how late its scheduled job may be before it is enqueued again.
    reconcile_interval_seconds: float = Field(default=10.0, gt=0)
    reconcile_min_age_seconds: float = Field(default=30.0, ge=0)
    watch_grace_seconds: float = Field(default=60.0, ge=0)
    # How long the registry read is reused before re-reading Redis.
    registry_cache_seconds: float = Field(default=1.0, ge=0)
