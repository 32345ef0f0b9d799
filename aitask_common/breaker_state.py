"""Where the circuit breakers stand, as Redis holds them: read by the dispatcher's tools and metrics and by the
task service's admin API; the breakers themselves (admit, record) are dispatcher_service/breakers.py."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from redis import Redis

from aitask_common.queue_shards import shared

BREAKER_KEY_PREFIX = "aitask:breaker:"
# Set of every breaker scope that ever recorded a call, so the tools and metrics never SCAN.
BREAKERS_INDEX_KEY = "aitask:breakers"
# A breaker untouched this long is forgotten (an instance that went away, a model no longer used).
BREAKER_IDLE_SECONDS = 24 * 3600


class BreakerState(StrEnum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def instance_scope(provider: str, instance_id: str, model: str) -> str:
    """The breaker of one provider instance, kept per model it serves: one model's outage upstream does not shut the
    instance for its other models (a fallback among them)."""
    return f"instance:{provider}:{instance_id}/{model}"


def model_scope(provider: str, model: str) -> str:
    """The breaker of one model of a provider, over all its instances."""
    return f"model:{provider}/{model}"


def breaker_keys(scope: str) -> list[str]:
    state = shared(BREAKER_KEY_PREFIX) + scope
    return [state, f"{state}:calls", f"{state}:failures", shared(BREAKERS_INDEX_KEY)]


@dataclass(frozen=True)
class BreakerStatus:
    """One breaker as the tools show it."""

    scope: str
    state: BreakerState
    # Epoch seconds: when an open breaker half-opens, or when a half-open one issues its probes again.
    until: float | None
    # Calls and failures in the current window (closed breakers only).
    calls: int
    failures: int


def breaker_statuses(redis: Redis) -> list[BreakerStatus]:
    """Every known breaker, by scope; the ones forgotten (idle a day) are dropped from the index."""
    scopes = sorted(m.decode() if isinstance(m, bytes) else m for m in redis.smembers(shared(BREAKERS_INDEX_KEY)))
    with redis.pipeline(transaction=False) as pipe:
        for scope in scopes:
            state, calls, failures, _ = breaker_keys(scope)
            pipe.hmget(state, "state", "until")
            pipe.zcard(calls)
            pipe.zcard(failures)
        replies = pipe.execute()
    statuses, gone = [], []
    for index, scope in enumerate(scopes):
        (state, until), calls, failures = replies[3 * index : 3 * index + 3]
        if state is None and not calls:
            gone.append(scope)
            continue
        current = BreakerState(state.decode()) if state else BreakerState.CLOSED
        shown_until = float(until) if until and current is not BreakerState.CLOSED else None
        statuses.append(BreakerStatus(scope, current, shown_until, calls, failures))
    if gone:
        redis.srem(shared(BREAKERS_INDEX_KEY), *gone)
    return statuses


def reset_breaker(redis: Redis, scope: str) -> None:
    """Forget a breaker (closed, empty window): an operator's override."""
    redis.delete(*breaker_keys(scope)[:3])
    redis.srem(shared(BREAKERS_INDEX_KEY), scope)
