"""Wait instead of poll (`Prefer: wait=N`, `wait_seconds`) and live events (WatchTask, SSE through Envoy)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import pytest

from aitask.v1 import task_service_pb2 as pb
from devstack.stack import LocalStack
from task_service.watch import REFRESH_SECONDS
from tests.conftest import wait_until
from tests.e2e.helpers import SEEDREAM
from upstream_simulator.control import SimulatorControl

IMAGES = "ark.images"
SSE = {"Accept": "text/event-stream"}
# How much later than the task's own change a waiter may hear of it (a loaded 2-core machine).
PROMPTNESS_SECONDS = 1.5
READS_METRIC = "aitask_task_reads_for_watchers_total"


@pytest.fixture
def upstream(stack: LocalStack) -> Iterator[SimulatorControl]:
    """The stack's simulator, without faults afterwards."""
    with stack.sim() as control:
        yield control
        control.clear_faults()


def create(rest: httpx.Client, user_id: str, headers: dict[str, str] | None = None, **fields: Any) -> httpx.Response:
    body = {"prompt": "a heron in the reeds", "user_id": user_id, **SEEDREAM, **fields}
    return rest.post("/api/v1/ai/image/task", json=body, headers=headers or {}, timeout=90)


def image_request(user_id: str, **fields: Any) -> pb.CreateImageTaskRequest:
    return pb.CreateImageTaskRequest(
        prompt="a heron in the reeds", user_id=user_id, provider=SEEDREAM["provider"], model=SEEDREAM["model"], **fields
    )


def created_id(rest: httpx.Client, user_id: str) -> str:
    response = create(rest, user_id)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def sse_events(rest: httpx.Client, task_id: str, events: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every message of a task's SSE stream, until the server closes it (appended to `events` as they come)."""
    events = [] if events is None else events
    with rest.stream("GET", f"/api/v1/ai/task/{task_id}/events", headers=SSE, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
    return events


# Moves a watcher may see: a retry takes a task back to pending.
LEGAL_MOVES = {
    ("pending", "processing"),
    ("processing", "pending"),
    ("processing", "completed"),
    ("pending", "completed"),
}


def assert_a_lifecycle(statuses: list[str]) -> None:
    """The statuses a watcher saw: each a legal move from the one before, ending completed."""
    assert statuses[-1] == "completed", statuses
    assert all((before, after) in LEGAL_MOVES for before, after in zip(statuses, statuses[1:], strict=False)), statuses


def task_service_metric(stack: LocalStack, name: str) -> float:
    """A metric of the task services (the watch hubs' reads, their watchers), summed over both processes."""
    total = 0.0
    for port in (stack.ports.metrics_task_service, stack.ports.metrics_task_service_2):
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
        total += sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))
    return total


# --- wait on create ------------------------------------------------------------------------------


def test_create_with_prefer_wait_answers_completed(
    rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    upstream.set_faults(IMAGES, latency_s=0)
    response = create(rest, user_id, {"Prefer": "wait=10"})
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=10"
    data = response.json()["data"]
    assert data["status"] == "completed"
    assert data["task"]["status"] == "completed" and data["task"]["task_id"] == data["task_id"]
    assert data["task"]["image_url"].startswith("http://")


def test_create_without_wait_has_no_task(rest: httpx.Client, user_id: str) -> None:
    response = create(rest, user_id)
    assert "preference-applied" not in response.headers
    assert "task" not in response.json()["data"]


def test_grpc_create_with_wait_seconds_answers_completed(stack: LocalStack, user_id: str) -> None:
    request = image_request(user_id, wait_seconds=10)
    created, call = stack.task_stub().CreateImageTask.with_call(request, timeout=30)
    assert created.data.status == "completed" and created.data.task.status == "completed"
    assert created.data.task.image_url
    assert "preference-applied" not in dict(call.initial_metadata())


@pytest.mark.parametrize("seconds", [61, -1])
def test_wait_seconds_out_of_range_is_refused_and_nothing_stored(
    rest: httpx.Client, stack: LocalStack, user_id: str, seconds: int
) -> None:
    response = create(rest, user_id, wait_seconds=seconds)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "INVALID_ARGUMENT" and body["message"].startswith("wait_seconds:")
    assert stack.tasks().count_documents({"user_id": user_id}) == 0


# --- wait on get ---------------------------------------------------------------------------------


def test_prefer_wait_above_the_cap_is_capped_and_said(rest: httpx.Client, user_id: str) -> None:
    task_id = created_id(rest, user_id)
    response = rest.get(f"/api/v1/ai/task/result/{task_id}", headers={"Prefer": "wait=999"}, timeout=90)
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=60"
    assert response.json()["data"]["status"] == "completed"


def test_wait_on_get_answers_when_the_task_finishes(
    rest: httpx.Client, stack: LocalStack, user_id: str, upstream: SimulatorControl
) -> None:
    upstream.set_faults(IMAGES, latency_s=3)
    task_id = created_id(rest, user_id)
    response = rest.get(f"/api/v1/ai/task/result/{task_id}", params={"wait_seconds": 30}, timeout=90)
    answered = time.time()
    data = response.json()["data"]
    assert data["status"] == "completed", data
    document = stack.tasks().find_one({"_id": task_id})
    assert document is not None
    finished = document["updated"].timestamp()
    assert 0 <= answered - finished < PROMPTNESS_SECONDS


def test_wait_that_times_out_answers_the_state_then(
    rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    upstream.set_faults(IMAGES, latency_s=8)
    task_id = created_id(rest, user_id)
    started = time.monotonic()
    response = rest.get(f"/api/v1/ai/task/result/{task_id}", headers={"Prefer": "wait=2"}, timeout=90)
    waited = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["data"]["status"] in ("pending", "processing")
    assert 2 <= waited < 2 + PROMPTNESS_SECONDS


def test_wait_on_another_users_task_is_not_found(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    task_id = created_id(rest, user_id)
    with stack.rest(stack.create_api_key("someone-else")) as other:
        response = other.get(f"/api/v1/ai/task/result/{task_id}", params={"wait_seconds": 5})
    assert response.status_code == 404


def test_many_waiters_cost_a_few_reads_not_one_each(
    stack: LocalStack, rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    waiters = 200
    upstream.set_faults(IMAGES, latency_s=2)
    task_id = created_id(rest, user_id)
    before = task_service_metric(stack, READS_METRIC)
    stub = stack.task_stub()
    calls = [
        stub.GetTaskResult.future(pb.GetTaskResultRequest(task_id=task_id, wait_seconds=30), timeout=60)
        for _ in range(waiters)
    ]
    assert {call.result().data.status for call in calls} == {"completed"}
    reads = task_service_metric(stack, READS_METRIC) - before
    # Per process: the first read, the claim, the completion (and a re-read after the subscription), not 200.
    assert 1 <= reads <= 10, reads


# --- live events ---------------------------------------------------------------------------------


def test_sse_streams_current_state_changes_and_final(
    rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    upstream.set_faults(IMAGES, latency_s=1.5)
    task_id = created_id(rest, user_id)
    events = sse_events(rest, task_id)
    assert events[0]["event"] == "status" and events[0]["task"]["status"] in ("pending", "processing")
    assert [event["event"] for event in events[1:-1]] == ["status"] * (len(events) - 2)
    assert "processing" in [event["task"]["status"] for event in events]
    assert events[-1]["event"] == "final" and events[-1]["success"] is True
    assert events[-1]["task"]["status"] == "completed" and events[-1]["task"]["image_url"]


def test_events_without_sse_accept_are_one_json_array(rest: httpx.Client, user_id: str) -> None:
    task_id = created_id(rest, user_id)
    wait_until(lambda: rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["status"] == "completed")
    response = rest.get(f"/api/v1/ai/task/{task_id}/events")
    assert response.status_code == 200
    assert [event["event"] for event in response.json()] == ["final"]


def test_sse_watcher_of_a_final_task_gets_one_event(rest: httpx.Client, user_id: str) -> None:
    task_id = created_id(rest, user_id)
    wait_until(lambda: rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["status"] == "completed")
    events = sse_events(rest, task_id)
    assert [(event["event"], event["task"]["status"]) for event in events] == [("final", "completed")]


def test_sse_of_an_unknown_task_is_not_found(rest: httpx.Client) -> None:
    response = rest.get("/api/v1/ai/task/01ARZ3NDEKTSV4RRFFQ69G5FAV/events", headers=SSE)
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"


@pytest.mark.parametrize("via_envoy", [True, False], ids=["via-envoy", "direct"])
def test_grpc_watch_streams_to_the_final_state(
    stack: LocalStack, user_id: str, upstream: SimulatorControl, via_envoy: bool
) -> None:
    upstream.set_faults(IMAGES, latency_s=1.5)
    stub = stack.task_stub(via_envoy)
    created = stub.CreateImageTask(image_request(user_id), timeout=10)
    events = list(stub.WatchTask(pb.WatchTaskRequest(task_id=created.data.task_id), timeout=60))
    assert events[0].event == "status"
    assert_a_lifecycle([event.task.status for event in events])
    assert events[-1].event == "final" and events[-1].success and events[-1].task.image_url
    # A watcher of the now final task gets one event and the stream ends.
    again = list(stub.WatchTask(pb.WatchTaskRequest(task_id=created.data.task_id), timeout=10))
    assert [(event.event, event.task.status) for event in again] == [("final", "completed")]


def test_grpc_watch_of_an_unknown_task_is_not_found(stack: LocalStack) -> None:
    with pytest.raises(grpc.RpcError) as error:
        list(stack.task_stub().WatchTask(pb.WatchTaskRequest(task_id="01ARZ3NDEKTSV4RRFFQ69G5FAV"), timeout=10))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_of_a_task_deleted_meanwhile_ends_not_found(
    stack: LocalStack, rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    upstream.set_faults(IMAGES, latency_s=20)
    task_id = created_id(rest, user_id)
    with ThreadPoolExecutor(1) as pool:
        received: list[dict[str, Any]] = []
        watching = pool.submit(sse_events, rest, task_id, received)
        wait_until(lambda: [event["task"]["status"] for event in received][-1:] == ["processing"])
        assert rest.delete(f"/api/v1/ai/task/{task_id}").status_code == 200
        # The delete's notice ends it at once; were it lost, the hub's timed re-read would, within REFRESH_SECONDS.
        events = watching.result(timeout=REFRESH_SECONDS + 5)
    assert events[0]["success"] is True
    assert events[-1]["success"] is False and events[-1]["code"] == "NOT_FOUND"


def test_a_watch_survives_a_redis_outage_that_swallowed_the_final_notice(
    stack: LocalStack, rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    upstream.set_faults(IMAGES, latency_s=3)
    task_id = created_id(rest, user_id)
    wait_until(lambda: stack.tasks().find_one({"_id": task_id, "status": "processing"}), timeout=15)
    # Directly on one task service, so the stream's hub is the one that loses its pub/sub connection.
    stub = stack.task_stub(via_envoy=False)
    with ThreadPoolExecutor(1) as pool:
        watching = pool.submit(lambda: list(stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=60)))
        stack.stop("redis")
        try:
            # The completion is written while Redis is down: its notice is lost.
            wait_until(lambda: stack.tasks().find_one({"_id": task_id, "status": "completed"}), timeout=15)
            assert not watching.done()
        finally:
            stack.start("redis")
        events = watching.result(timeout=20)
    assert events[-1].event == "final" and events[-1].task.status == "completed"
