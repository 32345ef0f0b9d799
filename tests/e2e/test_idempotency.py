"""Idempotent creates through Envoy: the same key returns the same task (one task, one job), a reused key is 409."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from aitask.v1 import task_service_pb2 as pb
from devstack.stack import LocalStack
from tests.conftest import wait_for_status
from tests.e2e.helpers import SEEDREAM, stop_dispatcher, waiting_job_task_ids

PATH = "/api/v1/ai/image/task"


def body(user_id: str, prompt: str = "a paper boat") -> dict:
    return {"prompt": prompt, "user_id": user_id, **SEEDREAM}


def post(rest: httpx.Client, json: dict, key: str) -> httpx.Response:
    return rest.post(PATH, json=json, headers={"Idempotency-Key": key})


def test_same_key_makes_one_task_and_one_job_even_concurrently(stack: LocalStack, user_id: str) -> None:
    stop_dispatcher(stack)  # jobs stay queued, where they can be counted
    try:
        with stack.rest() as rest:
            first = post(rest, body(user_id), "order-1")
            again = post(rest, body(user_id), "order-1")

        def racer(_: int) -> httpx.Response:
            with stack.rest() as client:
                return post(client, body(user_id, "raced"), "order-2")

        with ThreadPoolExecutor(8) as pool:
            raced = list(pool.map(racer, range(16)))
        jobs = waiting_job_task_ids(stack)
    finally:
        stack.start("dispatcher")
    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["data"] == first.json()["data"]
    assert again.json()["message"] == "task already created with this idempotency key"
    assert {response.status_code for response in raced} == {200}
    raced_ids = {response.json()["data"]["task_id"] for response in raced}
    assert len(raced_ids) == 1
    task_ids = {first.json()["data"]["task_id"], *raced_ids}
    assert {doc["_id"] for doc in stack.tasks().find({"user_id": user_id})} == task_ids
    assert sorted(task_id for task_id in jobs if task_id in task_ids) == sorted(task_ids)
    assert stack.redis().scard(f"aitask:inflight:{user_id}") in (0, 2)  # 0 once the restarted dispatcher ran them


def test_same_key_with_a_different_request_is_409(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    assert post(rest, body(user_id), "k").status_code == 200
    changes = [{"prompt": "another prompt"}, {"size": "1280x720"}, {"priority": "low"}, {"seed": 3}]
    for changed in ({**body(user_id), **change} for change in changes):
        response = post(rest, changed, "k")
        assert response.status_code == 409
        assert response.json() == {
            "success": False,
            "message": "idempotency_key: already used for a different request",
            "code": "ALREADY_EXISTS",
        }
    # Spelling out a default is the same request.
    assert post(rest, {**body(user_id), "size": "1024x1024", "priority": "default"}, "k").status_code == 200
    assert stack.tasks().count_documents({"user_id": user_id}) == 1


def test_keys_are_per_user(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    other = f"{user_id}-b"
    first = post(rest, body(user_id), "shared-key").json()["data"]["task_id"]
    second = post(rest, body(other), "shared-key").json()["data"]["task_id"]
    assert first != second
    assert stack.tasks().count_documents({"user_id": {"$in": [user_id, other]}}) == 2


def test_replay_reports_the_task_as_it_is_now(rest: httpx.Client, user_id: str) -> None:
    created = post(rest, body(user_id), "done").json()["data"]
    wait_for_status(rest, created["task_id"], {"completed"})
    replayed = post(rest, body(user_id), "done").json()["data"]
    assert replayed == {**created, "status": "completed"}


def test_a_deleted_tasks_key_can_be_used_again(rest: httpx.Client, user_id: str) -> None:
    first = post(rest, body(user_id), "again").json()["data"]["task_id"]
    assert rest.delete(f"/api/v1/ai/task/{first}").status_code == 200
    second = post(rest, body(user_id), "again")
    assert second.status_code == 200 and second.json()["data"]["task_id"] != first


def test_grpc_field_and_metadata_work_and_must_agree(stack: LocalStack, user_id: str) -> None:
    stub = stack.task_stub()
    request = pb.CreateTextTaskRequest(
        prompt="hi", user_id=user_id, provider="openai", model="gpt-4", idempotency_key="grpc-1"
    )
    first = stub.CreateTextTask(request, timeout=10)
    assert stub.CreateTextTask(request, timeout=10).data.task_id == first.data.task_id
    request.ClearField("idempotency_key")
    by_metadata = stub.CreateTextTask(request, metadata=(("idempotency-key", "grpc-1"),), timeout=10)
    assert by_metadata.data.task_id == first.data.task_id
    with pytest.raises(grpc.RpcError) as error:
        request.idempotency_key = "grpc-1"
        stub.CreateTextTask(request, metadata=(("idempotency-key", "grpc-2"),), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "idempotency_key: differs from the Idempotency-Key header"
    with pytest.raises(grpc.RpcError) as error:
        stub.CreateTextTask(
            pb.CreateTextTaskRequest(
                prompt="bye", user_id=user_id, provider="openai", model="gpt-4", idempotency_key="grpc-1"
            ),
            timeout=10,
        )
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert stack.tasks().count_documents({"user_id": user_id}) == 1


@pytest.mark.parametrize(
    ("header", "field"),
    [("", None), ("x" * 201, None), (None, "x" * 201), (None, "tab\there"), ("a", "b")],
    ids=["empty-header", "long-header", "long-field", "control-char", "disagreeing"],
)
def test_bad_keys_are_400_and_write_nothing(
    stack: LocalStack, rest: httpx.Client, user_id: str, header: str | None, field: str | None
) -> None:
    headers = {} if header is None else {"Idempotency-Key": header}
    json = body(user_id) if field is None else {**body(user_id), "idempotency_key": field}
    response = rest.post(PATH, json=json, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith("idempotency_key: ")
    assert stack.tasks().count_documents({"user_id": user_id}) == 0
