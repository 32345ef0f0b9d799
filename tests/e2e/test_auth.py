"""API keys through Envoy, REST and gRPC: 401 without a good key, 403 for another user, 404 for their tasks.

The stack runs with ENVIRONMENT=test, so keys are required; `stack.rest()` and
`stack.task_stub()` send the admin key made at start-up unless given another.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from devstack.processes import Process, free_port
from devstack.stack import LocalStack
from task_service.api_keys import format_key, new_key, split_key
from tests.conftest import wait_until
from tests.e2e.helpers import SEEDREAM


def image_body(user_id: str) -> dict:
    return {"prompt": "a moth at a lamp", "user_id": user_id, **SEEDREAM}


def create_as_admin(stack: LocalStack, user_id: str) -> str:
    with stack.rest() as rest:
        response = rest.post("/api/v1/ai/image/task", json=image_body(user_id))
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


@pytest.fixture
def user_key(stack: LocalStack, user_id: str) -> str:
    """A user-role key belonging to `user_id`."""
    return stack.create_api_key(user_id, name="test user")


def _unknown_key() -> str:
    return format_key(*new_key())


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz", "unknown", "wrong-secret"],
)
def test_missing_or_bad_key_is_401_and_writes_nothing(
    stack: LocalStack, user_id: str, authorization: str | None
) -> None:
    if authorization == "unknown":
        authorization = f"Bearer {_unknown_key()}"
    elif authorization == "wrong-secret":
        key_id, _ = split_key(stack.admin_key)  # type: ignore[misc]
        authorization = f"Bearer {format_key(key_id, new_key()[1])}"
    headers = {} if authorization is None else {"Authorization": authorization}
    with stack.rest(api_key="") as rest:
        for method, path, kwargs in [
            ("POST", "/api/v1/ai/image/task", {"json": image_body(user_id)}),
            ("GET", "/api/v1/ai/tasks", {"params": {"user_id": user_id}}),
            ("GET", "/api/v1/ai/task/result/01ARZ3NDEKTSV4RRFFQ69G5FAV", {}),
            ("DELETE", "/api/v1/ai/task/01ARZ3NDEKTSV4RRFFQ69G5FAV", {}),
        ]:
            response = rest.request(method, path, headers=headers, **kwargs)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["code"] == "UNAUTHENTICATED" and response.json()["success"] is False
            assert response.headers["www-authenticate"] == "Bearer"
    assert stack.tasks().count_documents({"user_id": user_id}) == 0


@pytest.mark.parametrize("via_envoy", [True, False], ids=["via-envoy", "direct"])
def test_grpc_without_a_key_is_unauthenticated(stack: LocalStack, user_id: str, via_envoy: bool) -> None:
    stub = stack.task_stub(via_envoy, api_key="")
    with pytest.raises(grpc.RpcError) as error:
        stub.CreateImageTask(pb.CreateImageTaskRequest(prompt="p", user_id=user_id, **SEEDREAM), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as error:
        stack.task_stub(via_envoy, api_key=_unknown_key()).ListTasks(pb.ListTasksRequest(user_id=user_id), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stack.tasks().count_documents({"user_id": user_id}) == 0


@pytest.mark.parametrize("via_envoy", [True, False], ids=["via-envoy", "direct"])
def test_health_checks_need_no_key(stack: LocalStack, via_envoy: bool) -> None:
    with stack.grpc_channel(via_envoy) as channel:
        for service in ("", "aitask.v1.TaskService"):
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_revoked_key_is_401_within_the_cache_ttl(stack: LocalStack, user_id: str, user_key: str) -> None:
    key_id, _ = split_key(user_key)  # type: ignore[misc]
    # One task-service replica (each caches keys on its own), API_KEY_CACHE_SECONDS 2 in the test stack.
    stub = stack.task_stub(via_envoy=False, api_key=user_key)
    cached = time.monotonic()
    stub.ListTasks(pb.ListTasksRequest(user_id=user_id), timeout=10)  # verified and cached from now on
    # Revoked as the CLI does it, in milliseconds (the CLI itself may take longer than the cache lasts).
    revoked_now = stack.mongo()["aitask"]["api_keys"].update_one(
        {"_id": key_id, "revoked": None}, {"$set": {"revoked": datetime.now(UTC)}}
    )
    assert revoked_now.modified_count == 1
    assert time.monotonic() - cached < 1.5
    # Inside the cache's lifetime the revoked key still works...
    assert stub.ListTasks(pb.ListTasksRequest(user_id=user_id), timeout=10).success

    def refused() -> bool:
        try:
            stub.ListTasks(pb.ListTasksRequest(user_id=user_id), timeout=10)
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    # ...and stops once it is over (2 s, with a margin for a loaded machine).
    wait_until(refused, timeout=10, interval=0.05)
    assert time.monotonic() - cached < 2 + 2.5
    with stack.rest(user_key) as rest:
        response = wait_until(
            lambda: (answer := rest.get("/api/v1/ai/tasks", params={"user_id": user_id})).status_code == 401 and answer,
            timeout=10,
        )
    assert response.json() == {"success": False, "message": "API key revoked", "code": "UNAUTHENTICATED"}
    listed = [line.split("\t") for line in stack.api_keys_cli("list").stdout.splitlines()]
    (row,) = [row for row in listed if row[0] == key_id]
    assert row[1:3] == [user_id, "user"] and row[5] != "-"
    assert stack.api_keys_cli("revoke", key_id).returncode == 1  # already revoked


def test_user_key_acts_for_its_own_user(stack: LocalStack, user_id: str, user_key: str) -> None:
    with stack.rest(user_key) as rest:
        created = rest.post("/api/v1/ai/image/task", json=image_body(user_id))
        assert created.status_code == 200, created.text
        task_id = created.json()["data"]["task_id"]
        assert rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["user_id"] == user_id
        listed = rest.get("/api/v1/ai/tasks", params={"user_id": user_id}).json()["data"]["tasks"]
        assert [task["task_id"] for task in listed] == [task_id]
        assert rest.delete(f"/api/v1/ai/task/{task_id}").status_code == 200
    stub = stack.task_stub(api_key=user_key)
    created_grpc = stub.CreateTextTask(
        pb.CreateTextTaskRequest(prompt="hi", user_id=user_id, provider="openai", model="gpt-4"), timeout=10
    )
    assert stub.GetTaskResult(pb.GetTaskResultRequest(task_id=created_grpc.data.task_id), timeout=10).success


def test_user_key_may_not_create_or_list_for_another_user(stack: LocalStack, user_key: str) -> None:
    other = f"other-{uuid.uuid4().hex[:8]}"
    with stack.rest(user_key) as rest:
        text = {"prompt": "p", "user_id": other, "provider": "openai", "model": "gpt-4"}
        assert rest.post("/api/v1/ai/text/task", json=text).status_code == 403
        response = rest.post("/api/v1/ai/image/task", json=image_body(other))
        assert response.status_code == 403
        assert response.json() == {
            "success": False,
            "message": "user_id: this API key may act only for its own user",
            "code": "PERMISSION_DENIED",
        }
        listing = rest.get("/api/v1/ai/tasks", params={"user_id": other})
        assert listing.status_code == 403 and listing.json()["code"] == "PERMISSION_DENIED"
    with pytest.raises(grpc.RpcError) as error:
        stack.task_stub(api_key=user_key).ListTasks(pb.ListTasksRequest(user_id=other), timeout=10)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stack.tasks().count_documents({"user_id": other}) == 0


def test_another_users_task_is_404_exactly_like_a_missing_one(stack: LocalStack, user_key: str) -> None:
    task_id = create_as_admin(stack, f"other-{uuid.uuid4().hex[:8]}")
    with stack.rest(user_key) as rest:
        for method, path in (("GET", f"/api/v1/ai/task/result/{task_id}"), ("DELETE", f"/api/v1/ai/task/{task_id}")):
            response = rest.request(method, path)
            assert response.status_code == 404
            assert response.json() == {"success": False, "message": f"task '{task_id}' not found", "code": "NOT_FOUND"}
    with pytest.raises(grpc.RpcError) as error:
        stack.task_stub(api_key=user_key).GetTaskResult(pb.GetTaskResultRequest(task_id=task_id), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == f"task '{task_id}' not found"
    assert stack.tasks().find_one({"_id": task_id}) is not None  # the DELETE did nothing


def test_admin_key_acts_for_any_user(stack: LocalStack, rest: httpx.Client) -> None:
    users = [f"anyone-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    task_ids = [create_as_admin(stack, user) for user in users]
    for user, task_id in zip(users, task_ids, strict=True):
        listed = rest.get("/api/v1/ai/tasks", params={"user_id": user}).json()["data"]["tasks"]
        assert [task["task_id"] for task in listed] == [task_id]
        assert rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["user_id"] == user
        assert rest.delete(f"/api/v1/ai/task/{task_id}").status_code == 200


def test_cli_rejects_a_bad_user_id(stack: LocalStack) -> None:
    created = stack.api_keys_cli("create", "--user-id", "bad user", "--role", "user")
    assert created.returncode == 2 and "user_id:" in created.stderr and created.stdout == ""


def test_development_needs_no_key_and_warns_at_start_up(stack: LocalStack, user_id: str) -> None:
    port = free_port()
    env = {
        "ENVIRONMENT": "development",
        "TASK_SERVICE_PORT": str(port),
        "METRICS_PORT": "0",
        "OUTPUT_HTTP_PORT": "0",
        "LOG_DIR": str(stack.workdir / "logs-development"),
    }
    stack.definitions["task_service_dev"] = Process(
        "task_service_dev", stack.definitions["task_service"].argv, env, port
    )
    stack.start("task_service_dev")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            created = stub.CreateImageTask(
                pb.CreateImageTaskRequest(prompt="p", user_id=user_id, **SEEDREAM), timeout=10
            )
            assert stub.ListTasks(pb.ListTasksRequest(user_id=user_id), timeout=10).data.tasks[0].task_id == (
                created.data.task_id
            )
    finally:
        stack.stop("task_service_dev")
    assert "authentication is OFF (ENVIRONMENT=development)" in stack.log_text("task_service_dev")
