"""Operations on real processes: health follows dependencies, clean SIGTERM, metrics move, JSON log files."""

from __future__ import annotations

import json
import re

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitask_common.registry import read_instances
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM


def health_of(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
        except grpc.RpcError:
            return -1


def metric(port: int | list[int], name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include `labels` (over several processes' ports)."""
    total = 0.0
    for one_port in port if isinstance(port, list) else [port]:
        for line in httpx.get(f"http://127.0.0.1:{one_port}/metrics", trust_env=False).text.splitlines():
            match = re.match(rf"{name}(\{{.*\}})? (\S+)$", line)
            if match and all(f'{key}="{value}"' in (match.group(1) or "") for key, value in labels.items()):
                total += float(match.group(2))
    return total


def task_service_metrics(stack: LocalStack) -> list[int]:
    """Both task-service processes' metrics ports (Envoy balances requests between them)."""
    return [stack.ports.metrics_task_service, stack.ports.metrics_task_service_2]


def test_health_is_not_serving_while_redis_is_down(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    ports = [stack.ports.task_service, stack.ports.provider_volcengine]
    assert all(health_of(port) == serving for port in ports)
    stack.stop("redis")
    try:
        wait_until(lambda: all(health_of(port) == not_serving for port in ports), timeout=15)
        assert health_of(stack.ports.task_service, "aitask.v1.TaskService") == not_serving
    finally:
        stack.start("redis")
    wait_until(lambda: all(health_of(port) == serving for port in ports), timeout=15)
    # The whole pipeline works again.
    task_id = rest.post("/api/v1/ai/image/task", json={"prompt": "after", "user_id": user_id, **SEEDREAM}).json()
    assert wait_for_status(rest, task_id["data"]["task_id"], {"completed", "failed"})["status"] == "completed"


def test_sigterm_to_the_dispatcher_finishes_the_task_in_hand(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with stack.sim() as sim:
        sim.set_faults("ark.images", latency_s=2.0)
        try:
            body = {"prompt": "slow one", "user_id": user_id, **SEEDREAM}
            task_id = rest.post("/api/v1/ai/image/task", json=body).json()["data"]["task_id"]
            wait_until(lambda: stack.tasks().find_one({"_id": task_id})["status"] == "processing")
            exit_code = stack.terminate_main_process("dispatcher")
        finally:
            sim.clear_faults()
    try:
        assert exit_code == 0
        document = stack.tasks().find_one({"_id": task_id})
        assert document["status"] == "completed", document
        assert document["attempts"] == 1
    finally:
        stack.start("dispatcher")


def test_sigterm_deregisters_a_provider_at_once(stack: LocalStack) -> None:
    extra = stack.add_provider_instance("provider_openai", "provider_openai_term")
    stack.start(extra.name)
    address = f"127.0.0.1:{extra.port}"
    assert address in {instance.address for instance in read_instances(stack.redis())}
    assert stack.terminate_main_process(extra.name, timeout=30) == 0
    assert address not in {instance.address for instance in read_instances(stack.redis())}


def test_metrics_move_as_tasks_run(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    labels = {"provider": "volcengine", "model": SEEDREAM["model"], "type": "image"}
    created_before = metric(task_service_metrics(stack), "aitask_tasks_created_total", **labels)
    finished_before = metric(
        stack.ports.metrics_dispatcher, "aitask_tasks_finished_total", status="completed", **labels
    )
    rpcs_before = metric(task_service_metrics(stack), "aitask_grpc_requests_total", method="CreateImageTask", code="OK")
    task_id = rest.post("/api/v1/ai/image/task", json={"prompt": "counted", "user_id": user_id, **SEEDREAM}).json()
    wait_for_status(rest, task_id["data"]["task_id"], {"completed"})

    assert metric(task_service_metrics(stack), "aitask_tasks_created_total", **labels) == created_before + 1
    assert (
        metric(task_service_metrics(stack), "aitask_grpc_requests_total", method="CreateImageTask", code="OK")
        >= rpcs_before + 1
    )
    wait_until(
        lambda: (
            metric(stack.ports.metrics_dispatcher, "aitask_tasks_finished_total", status="completed", **labels)
            >= finished_before + 1
        )
    )
    assert metric(stack.ports.metrics_dispatcher, "aitask_task_duration_seconds_count", type="image") >= 1
    assert (
        metric(
            stack.ports.metrics_dispatcher, "aitask_upstream_call_duration_seconds_count", method="Generate", code="OK"
        )
        >= 1
    )
    assert metric(stack.ports.metrics_dispatcher, "aitask_provider_instances", provider="volcengine") >= 1
    assert re.search(
        r'aitask_queue_depth\{queue="critical",state="queued"\}',
        httpx.get(f"http://127.0.0.1:{stack.ports.metrics_dispatcher}/metrics", trust_env=False).text,
    )
    envoy_stats = httpx.get(f"http://127.0.0.1:{stack.ports.envoy_admin}/stats/prometheus", trust_env=False).text
    assert "envoy_cluster_upstream_rq_total" in envoy_stats


def test_service_log_files_are_json_with_task_ids(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    task_id = rest.post("/api/v1/ai/image/task", json={"prompt": "logged", "user_id": user_id, **SEEDREAM}).json()
    task_id = task_id["data"]["task_id"]
    wait_for_status(rest, task_id, {"completed"})
    log_dir = stack.workdir / "logs"
    for service, message in (("task_service", "task created"), ("dispatcher", "task completed")):
        (log_file,) = log_dir.glob(f"{service}-*.log")
        events = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert all({"time", "level", "message", "service"} <= event.keys() for event in events)
        assert any(event.get("task_id") == task_id and event["message"] == message for event in events), service
