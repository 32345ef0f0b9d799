"""Circuit breakers and upstream caps against a real Redis: the state machines every worker shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from aitask_common.breaker_state import BreakerState, breaker_keys, breaker_statuses, reset_breaker
from devstack.processes import ROOT
from devstack.stack import LoneRedis
from dispatcher_service.breakers import CLOSED_CACHE_SECONDS, Breakers
from dispatcher_service.caps import CapFull, Slot, UpstreamCaps, cap_status
from dispatcher_service.settings import DispatcherSettings, UpstreamCap
from tests.conftest import wait_until

QUICK = DispatcherSettings(
    breaker_failure_ratio=0.5, breaker_cooldown_seconds=0.5, breaker_probe_calls=2, breaker_window_seconds=60
)


def state(redis_server: LoneRedis, scope: str) -> BreakerState:
    return next(status.state for status in breaker_statuses(redis_server.redis()) if status.scope == scope)


def test_a_breaker_opens_on_its_failure_ratio_probes_after_the_cooldown_and_closes(redis_server: LoneRedis) -> None:
    breakers, scope = Breakers(redis_server.redis(), QUICK), f"model:test/{uuid.uuid4().hex}"
    for failed in (False, True, False):  # 1 of 3 failed: under the ratio
        assert breakers.admit(scope) is None
        breakers.record(scope, failed, min_calls=4)
    assert state(redis_server, scope) is BreakerState.CLOSED
    breakers.record(scope, True, min_calls=4)  # 2 of 4: the ratio, over the minimum
    assert state(redis_server, scope) is BreakerState.OPEN
    wait = breakers.admit(scope)
    assert wait is not None and 0 < wait <= 0.5
    time.sleep(wait)
    # Half-open: two probes go through, a third call waits for their outcome.
    assert breakers.admit(scope) is None and breakers.admit(scope) is None
    assert breakers.admit(scope) is not None
    assert state(redis_server, scope) is BreakerState.HALF_OPEN
    breakers.record(scope, False, min_calls=4)
    breakers.record(scope, False, min_calls=4)
    assert state(redis_server, scope) is BreakerState.CLOSED and breakers.admit(scope) is None
    reset_breaker(redis_server.redis(), scope)


def test_a_failed_probe_reopens_and_lost_probes_are_issued_again(redis_server: LoneRedis) -> None:
    breakers, scope = Breakers(redis_server.redis(), QUICK), f"instance:test:{uuid.uuid4().hex}/m"
    breakers.record(scope, True, min_calls=1)
    wait_until(lambda: breakers.admit(scope) is None, timeout=3, interval=0.05)  # the first probe
    breakers.record(scope, True, min_calls=1)
    assert state(redis_server, scope) is BreakerState.OPEN
    # Both probes taken and never answered (their workers killed): after a cooldown they are issued again.
    wait_until(lambda: breakers.admit(scope) is None, timeout=3, interval=0.05)
    assert breakers.admit(scope) is None and breakers.admit(scope) is not None
    wait_until(lambda: breakers.admit(scope) is None, timeout=3, interval=0.05)
    reset_breaker(redis_server.redis(), scope)
    assert all(status.scope != scope for status in breaker_statuses(redis_server.redis()))


def test_a_workers_successes_through_a_closed_breaker_are_counted_together_and_a_failure_at_once(
    redis_server: LoneRedis,
) -> None:
    redis = redis_server.redis()
    breakers, scope = Breakers(redis, QUICK), f"model:test/{uuid.uuid4().hex}"
    calls = breaker_keys(scope, 0)[1]
    assert breakers.admit(scope) is None
    for _ in range(5):
        breakers.record(scope, False, min_calls=4)
    assert redis.zcard(calls) == 0  # kept by the worker
    breakers.record(scope, True, min_calls=4)  # a failure goes at once, with the successes before it
    assert redis.zcard(calls) == 6 and state(redis_server, scope) is BreakerState.CLOSED
    assert breakers.admit(scope) is None
    breakers.record(scope, False, min_calls=4)
    time.sleep(CLOSED_CACHE_SECONDS)
    breakers.record(scope, False, min_calls=4)  # kept long enough: both counted, each at its own time
    times = [score for _, score in redis.zrange(calls, 0, -1, withscores=True)]
    assert len(times) == 8 and times[-1] - times[-2] >= CLOSED_CACHE_SECONDS * 0.9
    reset_breaker(redis, scope)


def test_a_concurrency_cap_lends_leases_wakes_the_longest_waiting_and_frees_a_killed_holders_slot(
    redis_server: LoneRedis,
) -> None:
    model = uuid.uuid4().hex
    settings = DispatcherSettings(upstream_caps={f"test/{model}": UpstreamCap(concurrency=2)})
    caps = UpstreamCaps(redis_server.redis(), settings, lease_seconds=1.0)
    first, second = caps.acquire("test", model), caps.acquire("test", model)
    assert isinstance(first, Slot) and isinstance(second, Slot)
    full = caps.acquire("test", model)
    assert full == CapFull(f"test/{model}", None)
    caps.wait_in_line(full.cap, "task-a", "default", "user 1")
    caps.wait_in_line(full.cap, "task-b", "low", "user-2")
    caps.wait_in_line(full.cap, "task-a", "default", "user 1")  # already waiting: keeps its place
    assert cap_status(redis_server.redis(), settings.upstream_caps)[f"test/{model}"]["waiting"] == 2
    assert caps.release(first) == [("task-a", "default", "user 1")]
    assert isinstance(caps.acquire("test", model), Slot)
    # `second` and the third holder never release (SIGKILL): their leases run out and the slots are free again.
    assert isinstance(caps.acquire("test", model), CapFull)
    wait_until(lambda: isinstance(caps.acquire("test", model), Slot), timeout=3, interval=0.1)
    assert caps.acquire("other", model) is None  # no cap applies


def test_a_rate_cap_spaces_calls_after_a_burst_of_one_seconds_worth(redis_server: LoneRedis) -> None:
    model = uuid.uuid4().hex
    settings = DispatcherSettings(upstream_caps={"test": UpstreamCap(per_second=4)})
    caps = UpstreamCaps(redis_server.redis(), settings, lease_seconds=10.0)
    burst = [caps.acquire("test", model) for _ in range(4)]
    assert all(isinstance(slot, Slot) for slot in burst)
    held = caps.acquire("test", model)
    assert isinstance(held, CapFull) and held.wait_seconds is not None and 0 < held.wait_seconds <= 0.25
    time.sleep(held.wait_seconds)
    assert isinstance(caps.acquire("test", model), Slot)


def test_the_queue_tool_lists_breakers_and_closes_one(redis_server: LoneRedis) -> None:
    scope = f"model:cli/{uuid.uuid4().hex}"
    Breakers(redis_server.redis(), DispatcherSettings(breaker_cooldown_seconds=600)).record(scope, True, min_calls=1)
    env = {**os.environ, "REDIS_URL": redis_server.url, "MONGO_URL": "mongodb://127.0.0.1:1/"}

    def tool(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dispatcher_service.queue_admin", "breakers", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return result.stdout

    listed = {entry["scope"]: entry for entry in json.loads(tool("--json"))}
    assert listed[scope]["state"] == "open" and listed[scope]["until"] > time.time()
    assert f"{scope}: open (half-opens in" in tool()
    tool("--reset", scope)
    assert scope not in {entry["scope"] for entry in json.loads(tool("--json"))}
