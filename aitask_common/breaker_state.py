"""Where the circuit breakers stand, as Redis holds them: read by the dispatcher's tools and metrics and by the
task service's admin API; the breakers themselves (admit, record) are dispatcher_service/breakers.py.

Each queue shard's workers share breakers of their own, kept under the shard's tag (aitask_common/queue_shards.py),
so the calls every task makes spread over a Redis Cluster's masters with the shards: each shard sees its share of
the calls and opens on its own. With one shard (the default) the keys are as before. The tools show one breaker per
scope: open if any shard's is, half-open if any is probing, with the calls and failures of every shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from redis import Redis

from aitask_common.queue_shards import layout

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


def breaker_keys(scope: str, shard: int) -> list[str]:
    """A breaker's keys in a queue shard: its state, its window of calls and of failures, and the shard's index."""
    state = layout().key(BREAKER_KEY_PREFIX + scope, shard)
    return [state, f"{state}:calls", f"{state}:failures", layout().key(BREAKERS_INDEX_KEY, shard)]


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


# Which shard's state a scope shows: the one furthest from closed.
_SEVERITY = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def breaker_statuses(redis: Redis) -> list[BreakerStatus]:
    """Every known breaker, by scope, over the queue shards; the ones forgotten (idle a day) leave the index."""
    by_scope: dict[str, BreakerStatus] = {}
    for shard in layout().shards():
        index = layout().key(BREAKERS_INDEX_KEY, shard)
        scopes = sorted(m.decode() if isinstance(m, bytes) else m for m in redis.smembers(index))
        with redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                state, calls, failures, _ = breaker_keys(scope, shard)
                pipe.hmget(state, "state", "until")
                pipe.zcard(calls)
                pipe.zcard(failures)
            replies = pipe.execute()
        gone = []
        for position, scope in enumerate(scopes):
            (state, until), calls, failures = replies[3 * position : 3 * position + 3]
            if state is None and not calls:
                gone.append(scope)
                continue
            current = BreakerState(state.decode()) if state else BreakerState.CLOSED
            shown_until = float(until) if until and current is not BreakerState.CLOSED else None
            found = BreakerStatus(scope, current, shown_until, calls, failures)
            if (seen := by_scope.get(scope)) is not None:
                worse = found if _SEVERITY[found.state] > _SEVERITY[seen.state] else seen
                found = BreakerStatus(scope, worse.state, worse.until, seen.calls + calls, seen.failures + failures)
            by_scope[scope] = found
        if gone:
            redis.srem(index, *gone)
    return [by_scope[scope] for scope in sorted(by_scope)]


def reset_breaker(redis: Redis, scope: str) -> None:
    """Forget a breaker in every shard (closed, empty window): an operator's override."""
    for shard in layout().shards():
        redis.delete(*breaker_keys(scope, shard)[:3])
        redis.srem(layout().key(BREAKERS_INDEX_KEY, shard), scope)
