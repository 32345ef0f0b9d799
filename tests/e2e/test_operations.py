"""Operations on real processes: health follows dependencies, clean SIGTERM, metrics move, JSON log files."""

from __future__ import annotations

import json
import re
import signal
import time

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitask_common.grpc_server import LIVENESS
from aitask_common.registry import ProviderInstance, read_instances
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


def test_health_while_redis_is_down_unready_where_it_matters_never_dead(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    task_service, provider = stack.ports.task_service, stack.ports.provider_volcengine
    assert health_of(task_service) == serving and health_of(provider) == serving
    stack.stop("redis")
    try:
        # The provider cannot be found without its registry: not ready. The task service still serves reads
        # from MongoDB: ready. Neither is dead (liveness), so Kubernetes restarts nothing.
        wait_until(lambda: health_of(provider) == not_serving, timeout=15)
        assert health_of(task_service) == serving
        assert health_of(task_service, "aitask.v1.TaskService") == serving
        for port in (task_service, provider):
            assert health_of(port, LIVENESS) == serving
    finally:
        stack.start("redis")
    wait_until(lambda: health_of(provider) == serving, timeout=15)
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
    # "At once": far sooner than the registry TTL, after which a silent instance would drop out anyway.
    ttl_seconds = 30.0
    extra = stack.add_provider_instance("provider_openai", "provider_openai_term")
    stack.start(extra.name, extra_env={"REGISTRY_TTL_SECONDS": str(ttl_seconds)})
    address = f"127.0.0.1:{extra.port}"
    redis = stack.redis()

    def registered() -> list[ProviderInstance]:
        return [instance for instance in read_instances(redis) if instance.address == address]

    (instance,) = registered()
    assert redis.ttl(instance.key) > ttl_seconds / 2  # without the deregistration it would linger this long
    process = stack.running.pop(extra.name)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: not registered(), timeout=ttl_seconds, interval=0.02)
    gone_after = time.monotonic() - signalled
    assert process.wait(30) == 0
    print(f"deregistered {gone_after:.2f} s after SIGTERM (REGISTRY_TTL_SECONDS {ttl_seconds:g})")
    assert gone_after < 2.0
    assert not redis.exists(instance.key)


def test_metrics_move_by_exact_deltas(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    # A model no other test's background work uses, three tasks that complete and one the upstream refuses (a
    # final error: one attempt, no retry); every counter moves by exactly what they did.
    model = "jimeng_high_aes_general_v21_L"
    labels = {"provider": "volcengine", "model": model, "type": "image"}
    calls = {"provider": "volcengine", "method": "Generate"}
    tasks, dispatcher = task_service_metrics(stack), stack.ports.metrics_dispatcher

    def counts() -> dict[str, float]:
        return {
            "created": metric(tasks, "aitask_tasks_created_total", **labels),
            "create_rpcs": metric(tasks, "aitask_grpc_requests_total", method="CreateImageTask", code="OK"),
            "completed": metric(dispatcher, "aitask_tasks_finished_total", status="completed", **labels),
            "failed": metric(dispatcher, "aitask_tasks_finished_total", status="failed", **labels),
            "retries": metric(dispatcher, "aitask_task_retries_total", provider="volcengine", model=model),
            "durations": metric(dispatcher, "aitask_task_duration_seconds_count", type="image"),
            "calls": metric(dispatcher, "aitask_upstream_call_duration_seconds_count", **calls),
            "calls_ok": metric(dispatcher, "aitask_upstream_call_duration_seconds_count", code="OK", **calls),
        }

    # The call and duration counters are not labelled by model: another test's volcengine image still running
    # would move them.
    unfinished = {"provider": "volcengine", "type": "image", "status": {"$in": ["pending", "processing"]}}
    wait_until(lambda: stack.tasks().count_documents(unfinished) == 0, timeout=120)
    before = counts()
    prompts = ["counted 1", "counted 2", "counted 3", "refused [[fail:400]]"]
    bodies = [{"prompt": prompt, "user_id": user_id, "provider": "volcengine", "model": model} for prompt in prompts]
    task_ids = [rest.post("/api/v1/ai/image/task", json=body).json()["data"]["task_id"] for body in bodies]
    results = [wait_for_status(rest, task_id, {"completed", "failed"})["status"] for task_id in task_ids]
    assert results == ["completed"] * 3 + ["failed"]
    expected = {"created": 4, "create_rpcs": 4, "completed": 3, "failed": 1, "retries": 0, "durations": 4}
    expected |= {"calls": 4, "calls_ok": 3}
    # The dispatcher counts a task after writing its outcome: the last increments may trail the reads above.
    wait_until(lambda: all(counts()[name] - before[name] >= delta for name, delta in expected.items()))
    assert {name: value - before[name] for name, value in counts().items()} == expected

    assert metric(dispatcher, "aitask_provider_instances", provider="volcengine") >= 1
    assert re.search(
        r'aitask_queue_depth\{queue="critical",shard="0",state="queued"\}',
        httpx.get(f"http://127.0.0.1:{dispatcher}/metrics", trust_env=False).text,
    )
    envoy_stats = httpx.get(f"http://127.0.0.1:{stack.ports.envoy_admin}/stats/prometheus", trust_env=False).text
    assert "envoy_cluster_upstream_rq_total" in envoy_stats


def test_service_log_files_are_json_with_task_ids(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    task_id = rest.post("/api/v1/ai/image/task", json={"prompt": "logged", "user_id": user_id, **SEEDREAM}).json()
    task_id = task_id["data"]["task_id"]
    wait_for_status(rest, task_id, {"completed"})
    log_dir = stack.workdir / "logs"
    for service, message in (("task_service", "task created"), ("dispatcher", "task completed")):
        # One file per local day: a stack running across midnight has two.
        log_files = sorted(log_dir.glob(f"{service}-*.log"))
        assert log_files and all(re.fullmatch(rf"{service}-\d{{4}}-\d\d-\d\d\.log", path.name) for path in log_files)
        events = [json.loads(line) for path in log_files for line in path.read_text().splitlines()]
        assert all({"time", "level", "message", "service"} <= event.keys() for event in events)
        assert any(event.get("task_id") == task_id and event["message"] == message for event in events), service
