"""README claims nothing else proves (issue 29), each on the real stack.

- "If Redis is down the insert is undone and the client gets 503": with Redis wholly down the create stops at the
  in-flight reservation, before the insert (503, nothing stored); with only the queue refused, the reservation and
  the insert succeed, the enqueue fails, and the insert is undone and the slot released.
- "Retryable upstream errors (429, 5xx, timeouts)" retry; "final errors (400, 401, 403) fail at once with the
  upstream's message".
- A task "waits, pending, for a live instance of its provider" for PROVIDER_WAIT_SECONDS, then fails.
- A video the upstream fails ends `failed` with the upstream's message, its submit paid once.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitask.v1 import task_service_pb2 as pb
from aitask_common.tasks import inflight_key
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM, stop_dispatcher, upstream_calls, wait_for_retry
from upstream_simulator.control import SimulatorControl

IMAGES = "ark.images"
JIMENG_VIDEO = {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}


@pytest.fixture
def upstream(stack: LocalStack) -> Iterator[SimulatorControl]:
    """The stack's simulator, without faults afterwards."""
    with stack.sim() as control:
        try:
            yield control
        finally:
            control.clear_faults()


def create(rest: httpx.Client, user_id: str, prompt: str, path: str = "image", **fields: object) -> httpx.Response:
    body = {"prompt": prompt, "user_id": user_id, **(SEEDREAM if path == "image" else JIMENG_VIDEO), **fields}
    return rest.post(f"/api/v1/ai/{path}/task", json=body)


def created(rest: httpx.Client, user_id: str, prompt: str, path: str = "image", **fields: object) -> str:
    response = create(rest, user_id, prompt, path, **fields)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def test_an_upstream_timeout_is_retried(
    stack: LocalStack, rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    # The provider gives the upstream 1 s (AI_TIMEOUT) instead of the stack's 20 s.
    stack.stop("provider_volcengine")
    stack.start("provider_volcengine", extra_env={"AI_TIMEOUT": "1"})
    try:
        upstream.set_faults(IMAGES, latency_s=3.0)
        task_id = created(rest, user_id, f"a slow harbour {user_id}")
        waiting = wait_for_retry(stack, task_id)
        assert "timed out" in waiting["error_message"], waiting["error_message"]
        upstream.clear_faults()
        result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)
        assert result["status"] == "completed" and result["attempts"] >= 3
        assert upstream_calls(stack, user_id, IMAGES) == result["attempts"] >= 3
    finally:
        upstream.clear_faults()
        stack.stop("provider_volcengine")
        stack.start("provider_volcengine")


def test_a_403_fails_at_once_with_the_upstreams_message(
    stack: LocalStack, rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    task_id = created(rest, user_id, f"a locked door {user_id} [[fail:403]]")
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "failed" and result["attempts"] == 1
    assert result["error_message"].startswith("ark 403"), result["error_message"]
    assert "you do not have access to the requested resource" in result["error_message"]
    time.sleep(1.5)  # longer than any backoff the stack would use for a retry
    assert upstream_calls(stack, user_id, IMAGES) == 1


def test_a_task_fails_after_provider_wait_seconds_without_a_live_provider(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    wait_seconds = 4.0
    stop_dispatcher(stack)
    stack.start("dispatcher", extra_env={"PROVIDER_WAIT_SECONDS": str(wait_seconds)})
    stack.stop("provider_openai")
    try:
        body = {"prompt": "hello", "user_id": user_id, "provider": "openai", "model": "gpt-4"}
        sent = time.monotonic()
        response = rest.post("/api/v1/ai/text/task", json=body)
        assert response.status_code == 200, response.text
        task_id = response.json()["data"]["task_id"]
        time.sleep(wait_seconds / 2)
        waiting = rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]
        assert waiting["status"] == "pending" and waiting["attempts"] == 0
        result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=30)
        failed_after = time.monotonic() - sent
    finally:
        stack.start("provider_openai")
        stop_dispatcher(stack)
        stack.start("dispatcher")
    print(f"failed {failed_after:.1f} s after the create (PROVIDER_WAIT_SECONDS {wait_seconds:g})")
    assert result["status"] == "failed" and result["attempts"] == 0
    assert result["error_message"] == f"no live instance of provider 'openai' for {wait_seconds:g} s"
    assert wait_seconds <= failed_after < wait_seconds + 10


def test_a_video_the_upstream_fails_ends_failed_with_its_message_paid_once(
    stack: LocalStack, rest: httpx.Client, user_id: str, upstream: SimulatorControl
) -> None:
    mark = f"m{user_id}"
    task_id = created(rest, user_id, f"a stormy coast {mark} [[fail:video]]", path="video")
    result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)
    assert result["status"] == "failed", result
    assert result["error_message"] == "jimeng 50511: Post Img Risk Not Pass", result["error_message"]
    assert not result.get("video_url")
    assert stack.tasks().find_one({"_id": task_id})["upstream_job_id"]
    time.sleep(1.5)  # a retry would submit again within the stack's backoff
    assert upstream_calls(stack, mark, "visual.CVSync2AsyncSubmitTask") == 1


def test_a_create_while_redis_is_down_is_503_and_stores_nothing(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    stack.stop("redis")
    try:
        responses = [create(rest, user_id, f"no queue {n}") for n in range(3)]
        for response in responses:
            assert response.status_code == 503, response.text
            assert response.json()["success"] is False and response.json()["code"] == "UNAVAILABLE"
        # MongoDB is up the whole time, yet no task of the user is there.
        assert stack.tasks().count_documents({"user_id": user_id}) == 0
    finally:
        stack.start("redis")
    assert stack.redis().scard(inflight_key(user_id)) == 0
    task_id = wait_until(lambda: (answer := create(rest, user_id, "back")).status_code == 200 and answer, timeout=30)
    task_id = task_id.json()["data"]["task_id"]
    assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"
    assert stack.tasks().count_documents({"user_id": user_id}) == 1
    # Leave the stack as found: both task services report SERVING (readiness follows MongoDB only, so they stayed
    # ready through the Redis outage: reads were served).
    wait_until(lambda: all(serving(port) for port in (stack.ports.task_service, stack.ports.task_service_2)))


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_a_create_whose_enqueue_fails_undoes_its_insert_and_frees_its_slot(stack: LocalStack, user_id: str) -> None:
    # A Redis user that may touch aitask:* keys (the in-flight slots, the registry) but not RQ's rq:* keys: the
    # reservation and the insert succeed, then the enqueue's MULTI is refused (NOPERM) as a Redis failure would be.
    redis = stack.redis()
    password = secrets.token_hex(16)
    redis.acl_setuser(
        "no-queue", enabled=True, passwords=[f"+{password}"], keys=["aitask:*"], channels=["*"], categories=["+@all"]
    )
    log_offset = len(stack.log_text("task_service"))
    stack.stop("task_service")
    try:
        redis_url = f"redis://no-queue:{password}@127.0.0.1:{stack.ports.redis}/0"
        stack.start("task_service", extra_env={"REDIS_URL": redis_url})
        request = pb.CreateImageTaskRequest(prompt="no queue", user_id=user_id, **SEEDREAM)
        with pytest.raises(grpc.RpcError) as error:
            stack.task_stub(via_envoy=False).CreateImageTask(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error.value.details() == "task queue unavailable, retry later"
        # The task was stored (the service logs its id only after the insert) and is gone again; its slot is free.
        withdrawn = [
            json.loads(line)
            for line in stack.log_text("task_service")[log_offset:].splitlines()
            if "enqueue failed; task withdrawn" in line
        ]
        assert len(withdrawn) == 1 and "no permissions" in withdrawn[0]["error"]
        assert stack.tasks().find_one({"_id": withdrawn[0]["task_id"]}) is None
        assert stack.tasks().count_documents({"user_id": user_id}) == 0
        assert redis.scard(inflight_key(user_id)) == 0
    finally:
        stack.stop("task_service")
        stack.start("task_service")
        redis.acl_deluser("no-queue")
