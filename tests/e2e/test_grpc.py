"""The same task lifecycle through generated gRPC stubs, via Envoy's shared port and directly."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from aitask.v1 import task_service_pb2 as pb
from devstack.stack import LocalStack
from tests.conftest import wait_until
from tests.e2e.helpers import SEEDREAM


@pytest.mark.parametrize("via_envoy", [True, False], ids=["via-envoy", "direct"])
def test_image_task_lifecycle_over_grpc(stack: LocalStack, user_id: str, via_envoy: bool) -> None:
    stub = stack.task_stub(via_envoy)
    created = stub.CreateImageTask(
        pb.CreateImageTaskRequest(prompt="a lighthouse at dusk", user_id=user_id, size="1280x720", seed=7, **SEEDREAM),
        timeout=10,
    )
    assert created.success and created.data.status == "pending"
    task_id = created.data.task_id

    def completed() -> pb.Task | None:
        task = stub.GetTaskResult(pb.GetTaskResultRequest(task_id=task_id), timeout=10).data
        return task if task.status in ("completed", "failed") else None

    task = wait_until(completed)
    assert task.status == "completed", task.error_message
    assert task.image_url and task.parameters.size == "1280x720" and task.parameters.seed == 7
    assert task.created.ToDatetime() <= task.updated.ToDatetime()

    listed = stub.ListTasks(pb.ListTasksRequest(user_id=user_id, type="image"), timeout=10)
    assert [item.task_id for item in listed.data.tasks] == [task_id]

    stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id), timeout=10)
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetTaskResult(pb.GetTaskResultRequest(task_id=task_id), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert task_id in missing.value.details()


def test_invalid_argument_keeps_plain_grpc_status_through_envoy(stack: LocalStack, user_id: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stack.task_stub().CreateImageTask(
            pb.CreateImageTaskRequest(prompt="x", user_id=user_id, provider="volcengine", model="nope"), timeout=10
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("model: unknown model 'nope'")


def test_health_and_reflection_answer_through_envoy(stack: LocalStack) -> None:
    channel = stack.grpc_channel()
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="aitask.v1.TaskService"), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {service.name for response in responses for service in response.list_services_response.service}
    assert "aitask.v1.TaskService" in names
