"""Routing that survives bad days, on the real stack: circuit breakers per provider instance and per model."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from aitask.v1 import task_service_pb2 as pb
from aitask_common.breaker_state import breaker_keys, breaker_statuses, instance_scope, model_scope, reset_breaker
from aitask_common.registry import read_instances
from devstack.stack import LocalStack
from dispatcher_service.breakers import CLOSED_CACHE_SECONDS
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM, ensure_running, stop_dispatcher, upstream_calls

SEEDREAM_BREAKER = model_scope(SEEDREAM["provider"], SEEDREAM["model"])
# Quick breakers for a test: a bad instance opens its own breaker long before the model's could open.
QUICK_BREAKERS = {
    "BREAKER_MIN_CALLS": "3",
    "BREAKER_MODEL_MIN_CALLS": "3",
    "BREAKER_FAILURE_RATIO": "0.5",
    "BREAKER_PROBE_CALLS": "1",
    "RETRY_BASE_SECONDS": "0.5",
    "RETRY_MAX_SECONDS": "1",
}


def create(rest: httpx.Client, user_id: str, prompt: str) -> str:
    body = {"prompt": prompt, "user_id": user_id, **SEEDREAM}
    response = rest.post("/api/v1/ai/image/task", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def breaker(stack: LocalStack, scope: str) -> dict[str, str]:
    """The breaker's state hash ({} while it never opened)."""
    raw = stack.redis().hgetall(breaker_keys(scope, 0)[0])
    return {key.decode(): value.decode() for key, value in raw.items()}


def generate_calls(port: int, code: str = r"\w+") -> float:
    """Generate RPCs a provider instance answered with `code` (any by default), from its Prometheus endpoint."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    pattern = rf'aitask_grpc_requests_total\{{code="{code}",method="Generate"\}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


@pytest.fixture
def quick_breakers(stack: LocalStack) -> Iterator[Callable[[dict[str, str]], None]]:
    """Restart the dispatcher with quick breakers (and the given environment) and no breaker state; afterwards the
    usual dispatcher, no faults and no breaker state left for the next test."""

    def restart(env: dict[str, str]) -> None:
        stop_dispatcher(stack)
        for status in breaker_statuses(stack.redis()):  # nor any state an earlier test left
            reset_breaker(stack.redis(), status.scope)
        stack.start("dispatcher", {**QUICK_BREAKERS, **env})

    try:
        yield restart
    finally:
        with stack.sim() as sim:
            sim.clear_faults()
        stop_dispatcher(stack)
        for status in breaker_statuses(stack.redis()):
            reset_breaker(stack.redis(), status.scope)
        stack.start("dispatcher")


def test_a_failing_instance_opens_its_breaker_the_other_takes_the_traffic_then_it_is_probed_and_rejoins(
    rest: httpx.Client, stack: LocalStack, user_id: str, quick_breakers: Callable[[dict[str, str]], None]
) -> None:
    # The second instance's upstream is a simulator of its own that is not running yet: every call fails.
    own_upstream = stack.add_simulator_instance("simulator_breaker")
    bad = stack.add_provider_instance("provider_volcengine", "provider_volcengine_breaker")
    quick_breakers({"BREAKER_MODEL_MIN_CALLS": "40", "BREAKER_COOLDOWN_SECONDS": "15"})
    stack.start(bad.name, {"ARK_BASE_URL": f"http://127.0.0.1:{own_upstream.port}/api/v3"})
    bad_metrics = int(bad.env["METRICS_PORT"])
    bad_address = f"127.0.0.1:{bad.port}"
    try:
        bad_id = wait_until(
            lambda: next((i.instance_id for i in read_instances(stack.redis()) if i.address == bad_address), None)
        )
        scope = instance_scope("volcengine", bad_id, SEEDREAM["model"])
        # Waves of tasks until the bad instance's breaker opens (round robin starts at a random turn per worker,
        # so how many tasks reach it first varies); each task fails over to the healthy instance and completes.
        first: list[str] = []

        def opened() -> dict[str, str] | None:
            wave = [create(rest, user_id, f"first wave {len(first) + n}") for n in range(5)]
            first.extend(wave)
            for task_id in wave:
                assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=90)["status"] == "completed"
            state = breaker(stack, scope)
            return state if state.get("state") == "open" else None

        state = wait_until(opened, timeout=120, interval=0.1)
        assert len(first) <= 20, f"{len(first)} tasks before the breaker opened"
        assert generate_calls(bad_metrics) >= 3
        assert breaker(stack, SEEDREAM_BREAKER).get("state", "closed") == "closed"

        # While it is open, the healthy instance takes every call: no task pays a failed attempt.
        calls_at_open = generate_calls(bad_metrics)
        second = [create(rest, user_id, f"second wave {n}") for n in range(6)]
        results = [wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60) for task_id in second]
        if time.time() < float(state["until"]):  # under heavy load the cooldown may end first: then probes ran
            assert generate_calls(bad_metrics) == calls_at_open
            assert [result["attempts"] for result in results] == [1] * len(second)
        assert {result["status"] for result in results} == {"completed"}

        # Its upstream comes back: after the cooldown a probe goes to it, succeeds, and it takes traffic again.
        stack.start(own_upstream.name)
        ok_before = generate_calls(bad_metrics, "OK")

        def rejoined() -> bool:
            create(rest, user_id, "probe wave")
            return breaker(stack, scope).get("state") == "closed" and generate_calls(bad_metrics, "OK") > ok_before

        wait_until(rejoined, timeout=90, interval=1.0)
        later = [create(rest, user_id, f"after rejoin {n}") for n in range(8)]
        for task_id in later:
            assert wait_for_status(rest, task_id, {"completed"}, timeout=60)["attempts"] == 1
        assert generate_calls(bad_metrics, "OK") > ok_before + 1
    finally:
        stack.stop(bad.name)
        stack.stop(own_upstream.name)


@pytest.mark.parametrize(
    "fault", [{"error_rate": 1.0, "error_status": 500}, {"rate_limit_rate": 1.0}], ids=["500s", "429s"]
)
def test_a_model_whose_every_instance_fails_makes_its_tasks_wait_then_complete_with_no_attempt_burnt_while_open(
    rest: httpx.Client,
    stack: LocalStack,
    user_id: str,
    quick_breakers: Callable[[dict[str, str]], None],
    fault: dict[str, object],
) -> None:
    quick_breakers({"BREAKER_COOLDOWN_SECONDS": "8"})
    marker = f"outage-{user_id}"
    with stack.sim() as sim:
        sim.set_faults("ark.images", **fault)
        task_ids = [create(rest, user_id, f"{marker} {n}") for n in range(6)]
        opened = wait_until(lambda: (state := breaker(stack, SEEDREAM_BREAKER)).get("state") == "open" and state)
        # Tasks wait, pending: none fails while the breaker is open.
        wait_until(
            lambda: stack.tasks().count_documents({"_id": {"$in": task_ids}, "status": "pending"}) == len(task_ids)
        )
        sim.clear_faults()  # the upstream recovers while the breaker is still open
        results = [wait_for_status(rest, task_id, {"completed", "failed"}, timeout=90) for task_id in task_ids]
        calls = sim.requests(marker)
    assert {result["status"] for result in results} == {"completed"}
    # Every upstream call used one attempt, and waiting used none.
    assert sum(result["attempts"] for result in results) == len(calls)
    assert all(result["attempts"] < 8 for result in results)
    # Nothing reached the upstream while the breaker was open (a call already on its way when it opened aside).
    since, until = float(opened["since"]), float(opened["until"])
    assert not [call for call in calls if since + 1.0 < call["at"] < until], calls
    assert breaker(stack, SEEDREAM_BREAKER)["state"] == "closed"


def test_a_provider_killed_mid_probe_while_half_open_loses_no_task_and_pays_for_none_twice(
    rest: httpx.Client, stack: LocalStack, user_id: str, quick_breakers: Callable[[dict[str, str]], None]
) -> None:
    quick_breakers({"BREAKER_COOLDOWN_SECONDS": "5"})
    marks = [f"chaos-{user_id}-{n}" for n in range(4)]
    try:
        with stack.sim() as sim:
            # The model's only instance fails every call: its breakers open, the tasks wait pending.
            sim.set_faults("ark.images", error_rate=1.0, error_status=500)
            task_ids = [create(rest, user_id, mark) for mark in marks]
            wait_until(lambda: breaker(stack, SEEDREAM_BREAKER).get("state") == "open")
            time.sleep(CLOSED_CACHE_SECONDS + 0.5)  # a worker that saw it closed just before may still have called
            # The upstream recovers, slowly: after the cooldown the half-open breaker's one probe stays in flight.
            sim.clear_faults()
            sim.set_faults("ark.images", latency_s=4.0)
            failed_calls = {mark: len(sim.requests(mark)) for mark in marks}

            def probe_in_flight() -> str | None:
                return next((m for m in marks if len(sim.requests(m)) > failed_calls[m]), None)

            probed = wait_until(probe_in_flight, timeout=30, interval=0.05)
            assert sim.requests(probed)[-1]["status"] is None  # in flight
            assert breaker(stack, SEEDREAM_BREAKER)["state"] == "half_open"
            killed_at = time.time()
            stack.kill("provider_volcengine")
            stack.start("provider_volcengine")
            results = [wait_for_status(rest, task_id, {"completed", "failed"}, timeout=120) for task_id in task_ids]
            calls = {mark: sim.requests(mark)[failed_calls[mark] :] for mark in marks}
    finally:
        ensure_running(stack, "provider_volcengine")
    # No task lost: every one completed once the provider was back.
    assert {result["status"] for result in results} == {"completed"}, results
    # None paid twice for a result we had: only the probe's task was sent again, once, after the kill cut its call
    # (a synchronous vendor call cut mid-flight is paid, and its result is gone with the provider); every other
    # task was sent once.
    assert len(calls[probed]) == 2 and calls[probed][0]["at"] < killed_at < calls[probed][1]["at"], calls[probed]
    assert all(len(made) == 1 for mark, made in calls.items() if mark != probed), calls
    assert breaker(stack, SEEDREAM_BREAKER)["state"] == "closed"


def test_a_cap_of_two_concurrent_upstream_calls_holds_under_200_tasks(
    rest: httpx.Client, stack: LocalStack, user_id: str, quick_breakers: Callable[[dict[str, str]], None]
) -> None:
    caps = json.dumps({f"{SEEDREAM['provider']}/{SEEDREAM['model']}": {"concurrency": 2}})
    quick_breakers({"UPSTREAM_CAPS": caps, "WORKER_CONCURRENCY": "6", "CAP_RECHECK_SECONDS": "3"})
    marker = f"capped-{user_id}"
    with stack.sim() as sim:
        sim.set_faults("ark.images", latency_s=0.1)
        sim.reset_peak_concurrency()
        # Ten users of twenty tasks each: under the stack's in-flight cap per user.
        stub = stack.task_stub(via_envoy=False)
        requests = [
            pb.CreateImageTaskRequest(prompt=f"{marker} {n}", user_id=f"{user_id}-{n % 10}", **SEEDREAM)
            for n in range(200)
        ]
        task_ids = [
            call.result().data.task_id for call in [stub.CreateImageTask.future(r, timeout=60) for r in requests]
        ]
        wait_until(
            lambda: stack.tasks().count_documents({"_id": {"$in": task_ids}, "status": "completed"}) == len(task_ids),
            timeout=240,
            interval=1.0,
        )
        peak = sim.concurrency()["ark.images"]["peak"]
        calls = sim.requests(marker)
    assert peak == 2  # the cap was used, and never exceeded
    assert len(calls) == 200  # waiting for a slot cost no upstream call...
    attempts = [doc["attempts"] for doc in stack.tasks().find({"_id": {"$in": task_ids}}, {"attempts": 1})]
    assert attempts == [1] * 200  # ...and no attempt


@pytest.fixture
def fair_share(stack: LocalStack) -> Iterator[None]:
    """Task services with fair share on (two of a user's tasks queued at a time), one worker, a slow upstream."""
    for name in ("task_service", "task_service_2"):
        stack.stop(name)
        stack.start(name, {"FAIR_SHARE_DEPTH": "2"})
    stop_dispatcher(stack)
    stack.start("dispatcher", {"WORKER_CONCURRENCY": "1"})
    try:
        with stack.sim() as sim:
            sim.set_faults("ark.images", latency_s=0.3)
        yield
    finally:
        with stack.sim() as sim:
            sim.clear_faults()
        for name in ("task_service", "task_service_2", "dispatcher"):
            stack.stop(name)
            stack.start(name)


def test_one_users_burst_does_not_starve_another_users_single_task(
    rest: httpx.Client, stack: LocalStack, user_id: str, fair_share: None
) -> None:
    burst_marker, single_marker = f"burst-{user_id}", f"single-{user_id}"
    burst = [create(rest, f"{user_id}-a", f"{burst_marker} {n}") for n in range(20)]
    wait_until(lambda: upstream_calls(stack, burst_marker, "ark.images") >= 1)
    single = create(rest, f"{user_id}-b", single_marker)
    created = time.time()
    assert wait_for_status(rest, single, {"completed"}, timeout=60)["attempts"] == 1
    with stack.sim() as sim:
        started = sim.requests(single_marker)[0]["at"]
        burst_calls = sim.requests(burst_marker)
    # B's task waited behind at most the two of A's tasks in the queue and the one in flight, not A's backlog.
    ahead = [call for call in burst_calls if created < call["at"] < started]
    assert len(ahead) <= 3, (len(ahead), len(burst))
    for task_id in burst:
        assert wait_for_status(rest, task_id, {"completed"}, timeout=90)["attempts"] == 1


JIMENG_IMAGE = "jimeng_high_aes_general_v21_L"


def test_fallback_serves_a_task_that_allows_it_once_its_retries_are_spent(
    rest: httpx.Client, stack: LocalStack, user_id: str, quick_breakers: Callable[[dict[str, str]], None]
) -> None:
    # Breakers that do not open here: the retries are what is spent.
    quick_breakers({"MAX_ATTEMPTS": "2", "BREAKER_MIN_CALLS": "1000", "BREAKER_MODEL_MIN_CALLS": "1000"})
    listed = rest.get("/api/v1/ai/models", params={"type": "image"}).json()["data"]["models"]
    seedream = next(entry for entry in listed if entry["model"] == SEEDREAM["model"])
    assert seedream["fallbacks"] == [f"volcengine/{JIMENG_IMAGE}"]
    marker = f"fallback-{user_id}"
    with stack.sim() as sim:
        sim.set_faults("ark.images", error_rate=1.0, error_status=503)

        def create_with(label: str, **fields: object) -> str:
            body = {"prompt": f"{marker} {label}", "user_id": user_id, **SEEDREAM, **fields}
            response = rest.post("/api/v1/ai/image/task", json=body)
            assert response.status_code == 200, response.text
            return str(response.json()["data"]["task_id"])

        allowed = create_with("allowed", allow_fallback=True, size="864x1152")
        not_allowed = create_with("not-allowed")
        unmappable = create_with("unmappable", allow_fallback=True, size="1512x648")
        served = wait_for_status(rest, allowed, {"completed", "failed"}, timeout=60)
        refused = wait_for_status(rest, not_allowed, {"completed", "failed"}, timeout=60)
        skipped = wait_for_status(rest, unmappable, {"completed", "failed"}, timeout=60)
        fallback_calls = [call for call in sim.requests(marker) if call["endpoint"] == "visual.CVProcess"]
    assert served["status"] == "completed" and served["allow_fallback"] is True
    assert (served["provider"], served["model"]) == (SEEDREAM["provider"], SEEDREAM["model"])
    assert (served["served_provider"], served["served_model"]) == ("volcengine", JIMENG_IMAGE)
    assert served["image_url"]
    assert refused["status"] == "failed" and "gave up after 2 attempts" in refused["error_message"]
    assert refused["served_model"] == SEEDREAM["model"]
    # 1512x648 (7:3) has no size of its aspect ratio at the fallback: skipped, the task fails as without one.
    assert skipped["status"] == "failed" and skipped["served_model"] == SEEDREAM["model"]
    # Only the task that allowed it reached the fallback, with its size mapped to the same aspect ratio (3:4).
    assert len(fallback_calls) == 1 and "allowed" in fallback_calls[0]["text"], fallback_calls
    assert "384" in fallback_calls[0]["text"] and "512" in fallback_calls[0]["text"]


def test_fallback_serves_a_task_at_once_while_its_models_breaker_is_open(
    rest: httpx.Client, stack: LocalStack, user_id: str, quick_breakers: Callable[[dict[str, str]], None]
) -> None:
    quick_breakers({"BREAKER_COOLDOWN_SECONDS": "60"})
    marker = f"open-fallback-{user_id}"
    with stack.sim() as sim:
        sim.set_faults("ark.images", error_rate=1.0, error_status=500)
        failing = [create(rest, user_id, f"{marker} opener {n}") for n in range(4)]
        wait_until(lambda: breaker(stack, SEEDREAM_BREAKER).get("state") == "open")
        # A worker that saw the breaker closed just before trusts that for CLOSED_CACHE_SECONDS (breakers.py).
        time.sleep(CLOSED_CACHE_SECONDS)
        response = rest.post(
            "/api/v1/ai/image/task",
            json={"prompt": f"{marker} falls back", "user_id": user_id, **SEEDREAM, "allow_fallback": True},
        )
        task_id = response.json()["data"]["task_id"]
        served = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)
        seedream_calls = [call for call in sim.requests(f"{marker} falls back") if call["endpoint"] == "ark.images"]
        # The tasks that did not allow a fallback wait, pending, for the breaker.
        assert {wait_for_status(rest, t, {"pending"})["status"] for t in failing} == {"pending"}
    assert served["status"] == "completed" and served["served_model"] == JIMENG_IMAGE
    assert served["attempts"] == 1 and seedream_calls == []  # the open breaker let nothing through to Seedream


def test_a_429_storm_under_a_cap_of_two_finishes_every_task_with_at_most_two_in_flight(
    rest: httpx.Client, stack: LocalStack, user_id: str, quick_breakers: Callable[[dict[str, str]], None]
) -> None:
    caps = json.dumps({SEEDREAM["provider"]: {"concurrency": 2}})
    # Enough attempts that no task runs out of them in a 50 % storm (0.5^20).
    # 429s count against the breakers: if they open, tasks wait out a short cooldown.
    quick_breakers(
        {"UPSTREAM_CAPS": caps, "WORKER_CONCURRENCY": "6", "MAX_ATTEMPTS": "20", "BREAKER_COOLDOWN_SECONDS": "5"}
    )
    marker = f"storm-{user_id}"
    with stack.sim() as sim:
        sim.set_faults("ark.images", latency_s=0.1, rate_limit_rate=0.5)
        sim.reset_peak_concurrency()
        storm_ends = time.monotonic() + 20
        task_ids = [create(rest, f"{user_id}-{n % 2}", f"{marker} {n}") for n in range(40)]
        time.sleep(max(0.0, storm_ends - time.monotonic()))  # the storm lasts its 20 s whatever the tasks do
        sim.clear_faults()
        results = [wait_for_status(rest, task_id, {"completed", "failed"}, timeout=90) for task_id in task_ids]
        peak = sim.concurrency()["ark.images"]["peak"]
        rate_limited = sum(call["status"] == 429 for call in sim.requests(marker))
    assert {result["status"] for result in results} == {"completed"}
    assert rate_limited > 0 and peak <= 2, (rate_limited, peak)
