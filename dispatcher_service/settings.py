"""Dispatcher settings."""

from __future__ import annotations

from typing import Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from aitask_common.output_settings import OutputSettings


class UpstreamCap(BaseModel):
    """One entry of UPSTREAM_CAPS: what one provider account, or one model of it, takes at most."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=0, ge=0)
    """Calls in flight at most (0: no cap)."""
    per_second: float = Field(default=0.0, ge=0)
    """Calls started per second at most, with a burst of one second's worth (0: no cap)."""


class DispatcherSettings(OutputSettings):
    """Environment of `python -m dispatcher_service`."""

    metrics_port: int = Field(default=9465, ge=0, le=65535)
    """Port of /metrics (0: off)."""

    worker_concurrency: int = Field(default=4, ge=1, validation_alias=AliasChoices("WORKER_CONCURRENCY", "WORKERS"))
    """Worker processes, each running one task at a time and polling upstream jobs; each serves one queue shard, so
    at least as many as the shards this dispatcher serves."""
    queue_shards_served: str = ""
    """The queue shards this dispatcher's workers serve, by number, comma-separated (`1`, `0,2`); empty: all of them.
    One dispatcher Deployment per shard, each with its own autoscaler on its shard's queue, scales each shard apart
    (deploy/README.md, "Queue shards")."""
    max_attempts: int = Field(default=8, ge=1)
    """Upstream attempts per task before a retryable error becomes final."""
    retry_base_seconds: float = Field(default=2.0, gt=0)
    """First retry backoff; it doubles per attempt (with jitter), never below the upstream's Retry-After."""
    retry_max_seconds: float = Field(default=60.0, gt=0)
    """Longest retry backoff."""
    provider_wait_seconds: float = Field(default=300.0, ge=0)
    """How long a task waits, pending, for a live instance of its provider before failing."""
    provider_recheck_seconds: float = Field(default=2.0, gt=0)
    """How often a task waiting for a provider looks for a live instance again."""
    poll_initial_seconds: float = Field(default=1.0, gt=0)
    """Video jobs: the earliest first poll after submit."""
    poll_max_seconds: float = Field(default=2.5, gt=0)
    """Video jobs: the longest gap between polls once the job's likely finish has passed."""
    poll_give_up_seconds: float = Field(default=3600.0, gt=0)
    """Give up on an upstream job that has not finished after this long."""
    lease_seconds: float = Field(default=30.0, gt=1)
    """Ownership lease on a task while a worker holds it; renewed while working."""
    outcome_write_seconds: float = Field(default=30.0, ge=0)
    """How long a run retries the write of an outcome it has in hand (a paid result, a submitted upstream job)
    while the database is unreachable, before it keeps the write in Redis for the task's next run. With
    AI_TIMEOUT, within RQ's 180 s job timeout."""
    low_credit_threshold: int = Field(default=100, ge=0)
    """Users with fewer credits available than this are counted in aitask_credit_users_low."""
    ledger_check_interval_seconds: float = Field(default=900.0, ge=0)
    """How often the reconciler checks the ledgers of the users whose tasks held credit since its last check
    (aitask_ledger_problems_total counts what it finds; 0 turns it off)."""
    reconcile_interval_seconds: float = Field(default=10.0, gt=0)
    """How often the reconciler looks for in-flight tasks that nothing in Redis will move."""
    reconcile_min_age_seconds: float = Field(default=30.0, ge=0)
    """How long a task must be unchanged before the reconciler counts it as stuck."""
    watch_grace_seconds: float = Field(default=60.0, ge=0)
    """How late a task's scheduled job may be before the reconciler enqueues it again."""
    registry_cache_seconds: float = Field(default=1.0, ge=0)
    """How long a read of the provider registry is reused before reading Redis again."""
    breaker_failure_ratio: float = Field(default=0.5, gt=0, le=1)
    """Circuit breakers (per provider instance and per model): the share of failed calls (upstream unavailable
    or timed out, instance unreachable) within the window that opens one."""
    breaker_min_calls: int = Field(default=10, ge=1)
    """Calls a provider instance's breaker needs within the window before its failure ratio can open it."""
    breaker_model_min_calls: int = Field(default=20, ge=1)
    """Calls a (provider, model) breaker needs within the window before its failure ratio can open it; above the
    instance's, so one bad instance opens its own breaker before it drags the model's down."""
    breaker_window_seconds: float = Field(default=60.0, gt=0)
    """The sliding window over which a breaker counts calls and failures."""
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    """How long an open breaker refuses calls (its tasks wait, pending, using no attempt) before it half-opens."""
    breaker_probe_calls: int = Field(default=3, ge=1)
    """Calls a half-open breaker lets through as probes; that many successes close it, one failure reopens it."""
    upstream_caps: dict[str, UpstreamCap] = Field(default_factory=dict)
    """Per-upstream caps (a JSON object) by provider (`"volcengine"`) or model (`"volcengine/<model>"`), each
    `{"concurrency": N, "per_second": R}`, enforced across every dispatcher worker through Redis; a call counts
    against its provider's cap and its model's. A task beyond them waits, pending, holding no worker and using no
    attempt: e.g. `{"volcengine/jimeng_t2i_v40": {"concurrency": 2, "per_second": 1}}`."""
    cap_recheck_seconds: float = Field(default=5.0, gt=0)
    """A task waiting for a full cap's slot is woken when one is freed; it also looks again after this long, in
    case the wake was lost (its waker killed)."""
    worker_deadline_dir: str = ""
    """Folder where each worker writes when it will next show progress, for the liveness probe
    (`healthcheck.py workers DIR`) to notice a stuck one; empty: off."""
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    """Seconds before each webhook retry (a JSON list; Standard Webhooks' schedule), each with up to 10 % jitter and
    never sooner than a 429's or 503's Retry-After; a message fails after the last."""
    webhook_timeout_seconds: float = Field(default=15.0, gt=0)
    """Longest a webhook delivery waits for the receiver's answer."""
    webhook_per_host_concurrency: int = Field(default=16, ge=1)
    """Deliveries in flight to one receiver host at most: a slow receiver holds only these."""
    webhook_max_concurrency: int = Field(default=200, ge=1)
    """Deliveries in flight from one dispatcher at most."""
    webhook_poll_seconds: float = Field(default=0.5, gt=0)
    """How often the delivery loop looks for due webhook messages."""
    webhook_sweep_seconds: float = Field(default=60.0, gt=0)
    """How often the delivery loop looks for tasks that turned final without their webhook message stored or indexed
    (the writer died, or Redis failed, between the two writes) and stores it. Each look reads the tasks with a final
    webhook that turned final since the last, a minute's bucket at a time, and a task's message only when Redis knows
    of it neither as due nor as stored lately."""
    webhook_delivery_nice: int = Field(default=10, ge=0, le=19)
    """Nice value of the delivery loop's thread (Linux; higher yields more): when the CPU is short, the task path
    comes first and deliveries catch up as it frees. 0 keeps the process's own priority."""
    webhook_ca_file: str = ""
    """A PEM file of certificate authorities that https webhook receivers' certificates may also chain to (an
    internal CA), besides the public ones; empty: the public ones only. Certificates are always verified."""

    @property
    def served_shards(self) -> list[int]:
        """The queue shards this dispatcher serves, in order."""
        if not self.queue_shards_served.strip():
            return list(range(self.queue_shards))
        return sorted({int(shard) for shard in self.queue_shards_served.split(",")})

    @model_validator(mode="after")
    def _a_worker_per_queue_shard(self) -> Self:
        named = [part.strip() for part in self.queue_shards_served.split(",")] if self.queue_shards_served else []
        wrong = [part for part in named if not part.isdigit() or int(part) >= self.queue_shards]
        if wrong:
            raise ValueError(
                f"QUEUE_SHARDS_SERVED names {', '.join(map(repr, wrong))}: shards are numbered 0 to "
                f"{self.queue_shards - 1} (QUEUE_SHARDS={self.queue_shards}), comma-separated"
            )
        served = self.served_shards
        if self.worker_concurrency < len(served):
            raise ValueError(
                f"WORKER_CONCURRENCY ({self.worker_concurrency}) must be at least the number of queue shards served "
                f"({len(served)}): each worker serves one queue shard, and a shard no worker serves runs nothing"
            )
        return self
