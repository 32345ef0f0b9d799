"""Dispatcher behaviour on real processes: priorities, retries, final errors, failover, hot-plug."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM, stop_dispatcher, upstream_calls, wait_for_retry


@pytest.fixture
def clean_faults(stack: LocalStack) -> Iterator[None]:
    """Every test here starts and ends with a well-behaved upstream."""
    with stack.sim() as sim:
        sim.clear_faults()
        yield
        sim.clear_faults()


def create(rest: httpx.Client, user_id: str, prompt: str = "a pine forest", **fields: object) -> str:
    response = rest.post("/api/v1/ai/image/task", json={"prompt": prompt, "user_id": user_id, **SEEDREAM, **fields})
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def generate_calls(port: int) -> float:
    """How many Generate RPCs a provider instance answered, from its Prometheus endpoint."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    return sum(
        float(value) for value in re.findall(r'aitask_grpc_requests_total\{code="OK",method="Generate"\} (\S+)', text)
    )


def test_critical_tasks_run_before_a_low_backlog(rest: httpx.Client, stack: LocalStack, user_id: str) -> None:
    stop_dispatcher(stack)
    try:
        low = [create(rest, user_id, f"low {n}", priority="low") for n in range(6)]
        critical = [create(rest, user_id, f"critical {n}", priority="critical") for n in range(3)]
    finally:
        stack.start("dispatcher", {"WORKER_CONCURRENCY": "1"})
    try:
        for task_id in low + critical:
            wait_for_status(rest, task_id, {"completed"})
        finished = {doc["_id"]: doc["updated"] for doc in stack.tasks().find({"_id": {"$in": low + critical}})}
        assert max(finished[task_id] for task_id in critical) < min(finished[task_id] for task_id in low)
    finally:
        stop_dispatcher(stack)
        stack.start("dispatcher")


def test_rate_limited_task_retries_then_completes(
    rest: httpx.Client, stack: LocalStack, user_id: str, clean_faults: None
) -> None:
    with stack.sim() as sim:
        sim.set_faults("ark.images", rate_limit_rate=1.0, retry_after_s=0.3)
        task_id = create(rest, user_id)
        # Two attempts have failed (a pending task with attempts recorded waits for its retry).
        waiting = wait_for_retry(stack, task_id)
        assert "429" in waiting["error_message"]
        sim.clear_faults()
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "completed"
    assert result["attempts"] >= 3 and result["error_message"] == ""


def test_server_errors_retry_until_the_budget_is_spent(
    rest: httpx.Client, stack: LocalStack, user_id: str, clean_faults: None
) -> None:
    with stack.sim() as sim:
        sim.set_faults("ark.images", error_rate=1.0, error_status=500)
        task_id = create(rest, user_id, f"a pine forest {user_id}")
        result = wait_for_status(rest, task_id, {"completed", "failed"})
    calls = upstream_calls(stack, user_id, "ark.images")
    assert result["status"] == "failed"
    assert result["attempts"] == 8 and calls == 8  # MAX_ATTEMPTS default, one upstream call each
    assert "ark 500" in result["error_message"] and "gave up after 8 attempts" in result["error_message"]


@pytest.mark.parametrize(("trigger", "fragment"), [("400", "ark 400"), ("401", "ark 401")])
def test_final_errors_fail_at_once_with_the_upstream_message(
    rest: httpx.Client, user_id: str, trigger: str, fragment: str
) -> None:
    task_id = create(rest, user_id, f"a harbour [[fail:{trigger}]]")
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "failed"
    assert result["attempts"] == 1
    assert result["error_message"].startswith(fragment)


def test_two_instances_share_traffic_and_survive_a_kill(
    rest: httpx.Client, stack: LocalStack, user_id: str, clean_faults: None
) -> None:
    second = stack.add_provider_instance("provider_volcengine", "provider_volcengine_2")
    stack.start(second.name)
    first_metrics = stack.ports.metrics_provider_volcengine
    second_metrics = int(second.env["METRICS_PORT"])
    try:
        before = generate_calls(first_metrics), generate_calls(second_metrics)
        for task_id in [create(rest, user_id, f"shared {n}") for n in range(8)]:
            wait_for_status(rest, task_id, {"completed"})
        assert generate_calls(first_metrics) > before[0] and generate_calls(second_metrics) > before[1]

        # Calls in flight inside the first instance when it dies: with the second stopped, every call goes to the
        # first, and the upstream (slow) has received each one, by its marker, before the kill. The second comes
        # back after it and takes the calls sent again.
        stack.stop(second.name)
        with stack.sim() as sim:
            sim.set_faults("ark.images", latency_s=3.0)
            marks = [f"{user_id}-inflight{n}" for n in range(3)]
            in_flight = [create(rest, user_id, f"in flight {mark}") for mark in marks]
            wait_until(lambda: all(len(sim.requests(mark)) == 1 for mark in marks), interval=0.05)
            killed_at = time.time()
            stack.kill("provider_volcengine")
            sim.clear_faults()
            stack.start(second.name)
            later = [create(rest, user_id, f"after kill {n}") for n in range(4)]
            for task_id in in_flight + later:
                assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
            # Each in-flight call was cut by the kill and sent again, to the surviving instance, after it.
            for mark in marks:
                calls = sim.requests(mark)
                assert len(calls) >= 2 and calls[0]["at"] < killed_at < calls[-1]["at"], calls
    finally:
        stack.start("provider_volcengine")
        stack.stop(second.name)


def test_a_provider_started_at_run_time_takes_traffic(rest: httpx.Client, stack: LocalStack, user_id: str) -> None:
    third = stack.add_provider_instance("provider_volcengine", "provider_volcengine_3")
    stack.start(third.name)
    try:
        metrics_port = int(third.env["METRICS_PORT"])
        for task_id in [create(rest, user_id, f"hot plug {n}") for n in range(6)]:
            wait_for_status(rest, task_id, {"completed"})
        assert generate_calls(metrics_port) > 0
    finally:
        stack.stop(third.name)


def test_tasks_wait_pending_for_a_provider_with_no_instance(
    rest: httpx.Client, stack: LocalStack, user_id: str
) -> None:
    stack.stop("provider_openai")
    try:
        body = {"prompt": "hello", "user_id": user_id, "provider": "openai", "model": "gpt-4"}
        task_id = rest.post("/api/v1/ai/text/task", json=body).json()["data"]["task_id"]
        time.sleep(2)
        waiting = rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]
        assert waiting["status"] == "pending" and waiting["attempts"] == 0
    finally:
        stack.start("provider_openai")
    assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"
