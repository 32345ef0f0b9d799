"""Final task results served from Redis: cached once final, never before, 404 after a delete, owner-only.

The stack runs two task-service replicas behind Envoy; both share the cache in Redis.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import grpc
import httpx
import pytest

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common.registry import read_instances
from devstack.processes import Process, free_port
from devstack.stack import LocalStack
from task_service.result_cache import TOMBSTONE, result_key
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM

HIT_COUNTER = re.compile(r'^aitask_result_cache_lookups_total\{outcome="hit"\} (\S+)$', re.M)


def create(rest: httpx.Client, user_id: str, prompt: str = "a kettle on a stove", **fields: object) -> str:
    response = rest.post("/api/v1/ai/image/task", json={"prompt": prompt, "user_id": user_id, **SEEDREAM, **fields})
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def replica_stubs(stack: LocalStack) -> list[task_service_pb2_grpc.TaskServiceStub]:
    """A stub on each task-service replica, bypassing Envoy."""
    ports = (stack.ports.task_service, stack.ports.task_service_2)
    return [task_service_pb2_grpc.TaskServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}")) for port in ports]


def unsigned(task: pb.Task) -> pb.Task:
    """`task` without its output link: a link is signed on each read, with an expiry counted from that second."""
    if task.HasField("output"):
        task.ClearField("video_url" if task.type == "video" else "image_url")
    return task


def unsigned_json(task: dict[str, Any]) -> dict[str, Any]:
    """`unsigned` for a task as REST answers it."""
    link = "video_url" if task["type"] == "video" else "image_url"
    return {key: value for key, value in task.items() if not (key == link and "output" in task)}


def get_result(stub: task_service_pb2_grpc.TaskServiceStub, task_id: str, key: str) -> pb.Task:
    """The task as the replica answers it, without its output link (see `unsigned`)."""
    return unsigned(stub.GetTaskResult(pb.GetTaskResultRequest(task_id=task_id), metadata=bearer(key), timeout=10).data)


def cached(stack: LocalStack, task_id: str) -> bytes | None:
    return stack.redis().get(result_key(task_id))  # type: ignore[return-value]


def cache_hits(stack: LocalStack) -> float:
    """Cache hits counted by both replicas so far."""
    total = 0.0
    for port in (stack.ports.metrics_task_service, stack.ports.metrics_task_service_2):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
        total += sum(float(value) for value in HIT_COUNTER.findall(text))
    return total


def completed_and_cached(stack: LocalStack, rest: httpx.Client, task_id: str) -> dict[str, Any]:
    """Wait (reading through Envoy, as a client polls) until the task completed; its first final read caches it."""
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "completed", result
    entry = cached(stack, task_id)
    assert entry is not None and pb.Task.FromString(entry).status == "completed"
    return result


def test_a_completed_task_is_read_from_the_cache_on_every_replica(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    task_id = create(rest, user_id)
    first = completed_and_cached(stack, rest, task_id)
    entry = unsigned(pb.Task.FromString(cached(stack, task_id) or b""))
    assert entry.task_id == task_id and entry.user_id == user_id and entry.output.sha256 == first["output"]["sha256"]

    # Behind the cache's back: a read of MongoDB would now answer this prompt.
    stack.tasks().update_one({"_id": task_id}, {"$set": {"revised_prompt": "changed behind the cache"}})
    hits_before = cache_hits(stack)
    for _ in range(4):
        again = rest.get(f"/api/v1/ai/task/result/{task_id}")
        assert again.status_code == 200 and unsigned_json(again.json()["data"]) == unsigned_json(first)
    for stub in replica_stubs(stack):
        assert get_result(stub, task_id, stack.admin_key) == entry
    assert cache_hits(stack) - hits_before >= 6


def test_a_task_in_flight_is_not_cached(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    with stack.sim() as sim:
        sim.set_faults("ark.images", latency_s=2.0)
        try:
            task_id = create(rest, user_id)
            assert rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["status"] in {"pending", "processing"}
            wait_until(lambda: stack.tasks().find_one({"_id": task_id})["status"] == "processing")
            assert rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["status"] == "processing"
            assert cached(stack, task_id) is None
        finally:
            sim.clear_faults()
    completed_and_cached(stack, rest, task_id)


def test_a_cached_task_deleted_over_rest_is_404_everywhere(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    task_id = create(rest, user_id)
    completed_and_cached(stack, rest, task_id)

    assert rest.delete(f"/api/v1/ai/task/{task_id}").status_code == 200
    assert cached(stack, task_id) == TOMBSTONE
    for _ in range(4):
        missing = rest.get(f"/api/v1/ai/task/result/{task_id}")
        assert missing.status_code == 404
        assert missing.json() == {"success": False, "message": f"task '{task_id}' not found", "code": "NOT_FOUND"}
    for stub in replica_stubs(stack):
        with pytest.raises(grpc.RpcError) as error:
            get_result(stub, task_id, stack.admin_key)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_cached_task_deleted_over_grpc_on_one_replica_is_404_on_the_other(stack: LocalStack, user_id: str) -> None:
    deleter, reader = replica_stubs(stack)
    created = deleter.CreateImageTask(
        pb.CreateImageTaskRequest(prompt="a bell tower", user_id=user_id, **SEEDREAM),
        metadata=bearer(stack.admin_key),
        timeout=10,
    )
    task_id = created.data.task_id
    task = wait_until(lambda: (t := get_result(reader, task_id, stack.admin_key)).status == "completed" and t)
    entry = cached(stack, task_id)
    assert entry is not None and unsigned(pb.Task.FromString(entry)) == task

    deleter.DeleteTask(pb.DeleteTaskRequest(task_id=task_id), metadata=bearer(stack.admin_key), timeout=10)
    # A read that found the task in MongoDB before the delete stores it late: the tombstone refuses it.
    assert stack.redis().set(result_key(task_id), entry, nx=True) is None
    with pytest.raises(grpc.RpcError) as error:
        get_result(reader, task_id, stack.admin_key)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == f"task '{task_id}' not found"


def test_another_users_cached_task_is_404_for_a_user_key(stack: LocalStack, rest: httpx.Client) -> None:
    owner, other = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("owner", "other"))
    task_id = create(rest, owner)
    completed_and_cached(stack, rest, task_id)

    other_key = stack.create_api_key(other, name="other user")
    with stack.rest(other_key) as client:
        response = client.get(f"/api/v1/ai/task/result/{task_id}")
    assert response.status_code == 404
    assert response.json() == {"success": False, "message": f"task '{task_id}' not found", "code": "NOT_FOUND"}
    for stub in replica_stubs(stack):
        with pytest.raises(grpc.RpcError) as error:
            get_result(stub, task_id, other_key)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert error.value.details() == f"task '{task_id}' not found"

    with stack.rest(stack.create_api_key(owner, name="owner")) as client:
        mine = client.get(f"/api/v1/ai/task/result/{task_id}")
    assert mine.status_code == 200 and mine.json()["data"]["user_id"] == owner


def test_results_over_result_cache_max_bytes_are_read_from_mongodb(stack: LocalStack, user_id: str) -> None:
    port = free_port()
    env = {
        "TASK_SERVICE_PORT": str(port),
        "METRICS_PORT": "0",
        "OUTPUT_HTTP_PORT": "0",
        "LOG_DIR": str(stack.workdir / "logs-small-cache"),
        "RESULT_CACHE_MAX_BYTES": "1024",
    }
    stack.definitions["task_service_small_cache"] = Process(
        "task_service_small_cache", stack.definitions["task_service"].argv, env, port
    )
    stack.start("task_service_small_cache")
    try:
        stub = task_service_pb2_grpc.TaskServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        small = pb.CreateImageTaskRequest(prompt="a pebble", user_id=user_id, **SEEDREAM)
        # A 1,000-character prompt and a base64 image: well over 1 KiB serialized.
        large = pb.CreateImageTaskRequest(
            prompt="a boulder " * 100, user_id=user_id, response_format="b64_json", **SEEDREAM
        )
        task_ids = [
            stub.CreateImageTask(request, metadata=bearer(stack.admin_key), timeout=10).data.task_id
            for request in (small, large)
        ]
        # Wait on MongoDB, not through Envoy: the stack's replicas (64 KiB limit) would cache the large one.
        for task_id in task_ids:
            wait_until(lambda task_id=task_id: stack.tasks().find_one({"_id": task_id})["status"] == "completed")
        small_task, large_task = ([get_result(stub, id_, stack.admin_key) for _ in range(2)] for id_ in task_ids)
    finally:
        stack.stop("task_service_small_cache")

    assert small_task[0] == small_task[1] and small_task[0].status == "completed"
    assert large_task[0] == large_task[1] and large_task[0].image_base64
    assert large_task[0].ByteSize() > 1024
    assert unsigned(pb.Task.FromString(cached(stack, task_ids[0]) or b"")) == small_task[0]
    assert cached(stack, task_ids[1]) is None


def test_with_redis_down_reads_fall_back_to_mongodb_and_deletes_are_refused(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    task_id = create(rest, user_id)
    completed_and_cached(stack, rest, task_id)
    # Directly: Envoy takes a replica out while its health check sees Redis down.
    stub = replica_stubs(stack)[0]
    expected = get_result(stub, task_id, stack.admin_key)
    stack.tasks().update_one({"_id": task_id}, {"$set": {"text_result": "read from MongoDB"}})
    stack.stop("redis")
    try:
        assert get_result(stub, task_id, stack.admin_key).text_result == "read from MongoDB"
        with pytest.raises(grpc.RpcError) as error:
            stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id), metadata=bearer(stack.admin_key), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stack.tasks().find_one({"_id": task_id}) is not None
    finally:
        stack.start("redis")
    # Redis kept its data (append-only file): the cached copy is back, and a delete now succeeds.
    assert get_result(stub, task_id, stack.admin_key) == expected
    stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id), metadata=bearer(stack.admin_key), timeout=10)
    assert cached(stack, task_id) == TOMBSTONE
    # Leave the stack as found: providers registered again, Envoy routing to both replicas.
    wait_until(lambda: len(read_instances(stack.redis())) >= 2)
    stack.wait_for_rest()
