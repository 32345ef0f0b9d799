"""Abuse limits through Envoy: per-key request rate (429, Retry-After), tasks in flight per user (429), body size."""

from __future__ import annotations

import grpc
import httpx
import pytest

from aitask.v1 import task_service_pb2 as pb
from devstack.stack import LocalStack
from tests.conftest import wait_until
from tests.e2e.helpers import SEEDREAM, stop_dispatcher

INFLIGHT_CAP = 30  # MAX_INFLIGHT_TASKS_PER_USER in the test stack


def image_body(user_id: str, prompt: str = "a kite") -> dict:
    return {"prompt": prompt, "user_id": user_id, **SEEDREAM}


def test_rate_limit_is_429_with_retry_after_per_key(stack: LocalStack, user_id: str) -> None:
    limited = stack.create_api_key(user_id, rate_limit=3)
    with stack.rest(limited) as rest:
        for _ in range(3):
            assert rest.get("/api/v1/ai/tasks", params={"user_id": user_id}).status_code == 200
        response = rest.post("/api/v1/ai/image/task", json=image_body(user_id))
    assert response.status_code == 429
    assert response.json()["code"] == "RESOURCE_EXHAUSTED" and response.json()["success"] is False
    retry_after = int(response.headers["retry-after"])  # Envoy passes the gRPC metadata on as a header
    assert 1 <= retry_after <= 60
    assert response.json()["message"] == f"rate limit exceeded: retry after {retry_after} s"
    assert stack.tasks().count_documents({"user_id": user_id}) == 0

    with pytest.raises(grpc.RpcError) as error:
        stack.task_stub(api_key=limited).ListTasks(pb.ListTasksRequest(user_id=user_id), timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 1 <= int(dict(error.value.trailing_metadata())["retry-after"]) <= 60

    # Other keys of the same user have their own budget.
    with stack.rest(stack.create_api_key(user_id)) as rest:
        assert rest.get("/api/v1/ai/tasks", params={"user_id": user_id}).status_code == 200


def test_tasks_in_flight_are_capped_per_user(stack: LocalStack, user_id: str) -> None:
    inflight = stack.redis()
    key = f"aitask:inflight:{user_id}"
    stop_dispatcher(stack)  # tasks stay pending
    try:
        with stack.rest() as rest:
            task_ids = [create(rest, image_body(user_id, f"kite {n}")) for n in range(INFLIGHT_CAP)]
            assert inflight.scard(key) == INFLIGHT_CAP

            refused = rest.post("/api/v1/ai/image/task", json=image_body(user_id, "one too many"))
            assert refused.status_code == 429, refused.text
            assert refused.json() == {
                "success": False,
                "message": f"too many tasks in flight: at most {INFLIGHT_CAP} pending or processing per user",
                "code": "RESOURCE_EXHAUSTED",
            }
            assert stack.tasks().count_documents({"user_id": user_id}) == INFLIGHT_CAP
            assert inflight.scard(key) == INFLIGHT_CAP
            assert create(rest, image_body(f"{user_id}-b")) not in task_ids  # other users are not affected

            # Deleting a pending task frees its slot.
            assert rest.delete(f"/api/v1/ai/task/{task_ids[0]}").status_code == 200
            assert inflight.scard(key) == INFLIGHT_CAP - 1
            task_ids[0] = create(rest, image_body(user_id, "in the freed slot"))
    finally:
        stack.start("dispatcher")
    # The dispatcher takes each task out of the set when it finishes.
    wait_until(lambda: inflight.scard(key) == 0, timeout=60)


def test_body_over_64_kib_is_413(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    response = rest.post("/api/v1/ai/image/task", json=image_body(user_id, "x" * 70_000))
    assert response.status_code == 413
    assert response.json()["success"] is False and response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert stack.tasks().count_documents({"user_id": user_id}) == 0


def create(rest: httpx.Client, body: dict) -> str:
    response = rest.post("/api/v1/ai/image/task", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]
