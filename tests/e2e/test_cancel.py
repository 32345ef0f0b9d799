"""Cancel and deadlines (issue 16 items 1 and 2), through REST via Envoy and native gRPC, against the simulator.

The simulator counts the requests each endpoint got (`stats`): a task that never reached an upstream leaves its
endpoint's count where it was, and a video no longer polled leaves its poll endpoint's count still.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from aitask.provider.v1 import provider_service_pb2 as provider_pb
from aitask.provider.v1 import provider_service_pb2_grpc
from aitask.v1 import task_service_pb2 as pb
from aitask_common.queues import CANCEL_UPSTREAM, POLLS_KEY, WATCH_JOBS_KEY, WATCH_KEY, job_options
from aitask_common.registry import read_instances
from aitask_common.rq_shards import shard_queue
from aitask_common.tasks import inflight_key, utcnow
from devstack.stack import LocalStack
from dispatcher_service.jobs import Runtime, process_task
from dispatcher_service.queue_admin import CANCELLED_TASKS
from tests.conftest import wait_for_status, wait_until
from tests.dispatcher_service import test_jobs
from tests.dispatcher_service.test_jobs import IMAGE, IMAGE_PARAMETERS, insert_task
from tests.dispatcher_service.test_queue_admin import admin
from tests.e2e.helpers import SEEDREAM, faults, restart_after_a_crash, stop_dispatcher

JIMENG_VIDEO = {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}
IMAGES = "ark.images"
VIDEO_SUBMIT, VIDEO_POLL = "visual.CVSync2AsyncSubmitTask", "visual.CVSync2AsyncGetResult"
# The dispatcher runtime test_jobs.py runs jobs in-process with (its `rt` fixture), under another name here.
in_process_runtime = test_jobs.rt
# The test stack polls a running video at least every POLL_MAX_SECONDS (1 s): three of them without a poll
# mean nothing polls it any more.
NO_POLL_WINDOW_SECONDS = 3.0


def create(rest: httpx.Client, user_id: str, path: str = "image", **fields: object) -> str:
    body = {
        "prompt": f"cancel me {user_id}",
        "user_id": user_id,
        **(SEEDREAM if path == "image" else JIMENG_VIDEO),
        **fields,
    }
    response = rest.post(f"/api/v1/ai/{path}/task", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def cancel(rest: httpx.Client, task_id: str, **options: object) -> httpx.Response:
    return rest.post(f"/api/v1/ai/task/{task_id}/cancel", **options)  # type: ignore[arg-type]


def requests_to(stack: LocalStack, endpoint: str, marker: str | None = None) -> int:
    """How many requests the simulator's `endpoint` has had: those whose body holds `marker` (the test's
    user id, which `create` puts in every prompt), or all of them."""
    with stack.sim() as sim:
        if marker is None:
            return int(sim.stats().get(endpoint, {}).get("requests", 0))
        return sum(1 for request in sim.requests(marker) if request["endpoint"] == endpoint)


def stored(stack: LocalStack, task_id: str) -> dict[str, Any]:
    """The task's document in MongoDB."""
    document = stack.tasks().find_one({"_id": task_id})
    assert document is not None
    return document


def status_of(stack: LocalStack, task_id: str) -> str:
    return str(stored(stack, task_id)["status"])


def dispatcher_log(stack: LocalStack, task_id: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stack.log_text("dispatcher").splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("task_id") == task_id]


def logged(stack: LocalStack, task_id: str, message: str) -> bool:
    return any(line["message"] == message for line in dispatcher_log(stack, task_id))


@contextmanager
def dispatcher_stopped(stack: LocalStack) -> Iterator[None]:
    stop_dispatcher(stack)
    try:
        yield
    finally:
        stack.start("dispatcher")


def waiting_job(stack: LocalStack, task_id: str) -> Job:
    """The task's latest RQ job (its watch entry names it)."""
    job_id = stack.redis().hget(WATCH_JOBS_KEY, task_id)
    assert isinstance(job_id, bytes)
    return Job.fetch(job_id.decode(), connection=stack.redis(), serializer=JSONSerializer)


def finished(job: Job) -> str | None:
    """What a finished job returned (the dispatcher's word for what happened), None while it has not."""
    return str(job.return_value()) if job.get_status(refresh=True) == "finished" else None


def assert_forgotten(stack: LocalStack, task_id: str, user_id: str) -> None:
    """Nothing in Redis still counts the task as in flight."""
    redis = stack.redis()
    assert redis.zscore(WATCH_KEY, task_id) is None and redis.hget(WATCH_JOBS_KEY, task_id) is None
    assert redis.zscore(POLLS_KEY, task_id) is None
    assert not redis.sismember(inflight_key(user_id), task_id)


# ---------------------------------------------------------------------------------------------------- pending


def test_a_queued_task_cancelled_over_rest_never_reaches_the_upstream(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    calls_before = requests_to(stack, IMAGES, user_id)
    with dispatcher_stopped(stack):
        task_id = create(rest, user_id)
        job = waiting_job(stack, task_id)
        response = cancel(rest, task_id)  # no body at all
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True and body["message"] == "task cancelled"
        assert body["data"]["status"] == "cancelled" and body["data"]["cancel_reason"] == "user"
        assert_forgotten(stack, task_id, user_id)
    # Its job was still queued: a worker takes it and ends it without a call.
    assert wait_until(lambda: finished(job)) == "already-final"
    assert requests_to(stack, IMAGES, user_id) == calls_before
    assert wait_for_status(rest, task_id, {"cancelled"})["cancel_reason"] == "user"


def test_a_task_waiting_for_its_retry_cancelled_over_grpc_never_reaches_the_upstream_again(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with faults(stack, IMAGES, rate_limit_rate=1.0, retry_after_s=4):
        task_id = create(rest, user_id)
        first = waiting_job(stack, task_id)
        # Refused with a 429, the task waits pending for a retry job due in 4 s.
        wait_until(lambda: stack.redis().hget(WATCH_JOBS_KEY, task_id) not in (None, first.id.encode()))
        retry = waiting_job(stack, task_id)
        assert status_of(stack, task_id) == "pending"
        calls_before = requests_to(stack, IMAGES, user_id)
        response = stack.task_stub(via_envoy=False).CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=10)
    assert response.data.status == "cancelled" and response.data.cancel_reason == "user"
    # The retry comes due (Retry-After 4 s) and ends without a call. Generous: slow calls other tests left in
    # flight may hold every worker for a while, and a dispatcher an earlier test had to SIGKILL leaves RQ's
    # scheduler lock to expire (61 s) before a new scheduler moves due jobs.
    assert wait_until(lambda: finished(retry), timeout=90) == "already-final"
    assert requests_to(stack, IMAGES, user_id) == calls_before
    assert status_of(stack, task_id) == "cancelled"


# ---------------------------------------------------------------------------------------------------- running


def test_a_processing_image_stays_cancelled_when_its_result_arrives(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    calls_before = requests_to(stack, IMAGES, user_id)
    with faults(stack, IMAGES, latency_s=3.0):
        task_id = create(rest, user_id)
        job = waiting_job(stack, task_id)
        wait_until(lambda: requests_to(stack, IMAGES, user_id) > calls_before)  # the call is in flight
        response = cancel(rest, task_id, json={})
        assert response.status_code == 200, response.text
        assert response.json()["data"]["status"] == "cancelled"
        # The upstream answers; the run finds the task cancelled and drops the result.
        wait_until(lambda: finished(job) == "already-final", timeout=15)
    document = stored(stack, task_id)
    assert document["status"] == "cancelled" and document["cancel_reason"] == "user"
    assert "image_url" not in document
    assert requests_to(stack, IMAGES, user_id) == calls_before + 1  # the one call in flight at the cancel, and no other
    assert wait_for_status(rest, task_id, {"cancelled", "completed", "failed"})["status"] == "cancelled"
    assert_forgotten(stack, task_id, user_id)


def test_a_running_video_is_never_polled_after_its_cancel(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    with faults(stack, VIDEO_POLL, video_seconds=30.0):
        task_id = create(rest, user_id, "video")
        wait_until(lambda: stack.redis().zscore(POLLS_KEY, task_id) is not None, timeout=15)
        # This task's polls: those naming its upstream job (another test's video may still be polled meanwhile).
        upstream_job_id = stored(stack, task_id)["upstream_job_id"]
        wait_until(lambda: requests_to(stack, VIDEO_POLL, upstream_job_id) > 0)
        response = cancel(rest, task_id)
        assert response.status_code == 200, response.text
        # Out of the poll set at once.
        assert stack.redis().zscore(POLLS_KEY, task_id) is None
        # The visual API has no cancel: the provider says so, and the job is left to finish, unpolled.
        wait_until(lambda: logged(stack, task_id, "upstream job left to finish"), timeout=15)
        polls_after_cancel = requests_to(stack, VIDEO_POLL, upstream_job_id)
        time.sleep(NO_POLL_WINDOW_SECONDS)  # nothing to wait for: the point is that nothing happens
        assert requests_to(stack, VIDEO_POLL, upstream_job_id) == polls_after_cancel
    assert status_of(stack, task_id) == "cancelled"
    assert_forgotten(stack, task_id, user_id)


def test_a_video_submitted_after_its_cancel_has_that_upstream_job_cancelled(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with faults(stack, VIDEO_SUBMIT, latency_s=3.0):
        task_id = create(rest, user_id, "video")
        wait_until(lambda: status_of(stack, task_id) == "processing")
        polls_before = requests_to(stack, VIDEO_POLL)
        assert cancel(rest, task_id).status_code == 200
        wait_until(lambda: logged(stack, task_id, "upstream job submitted after a cancel: cancelling it"), timeout=15)
        wait_until(lambda: logged(stack, task_id, "upstream job left to finish"), timeout=15)
    time.sleep(NO_POLL_WINDOW_SECONDS)  # nothing to wait for: the point is that nothing happens
    assert requests_to(stack, VIDEO_POLL) == polls_before
    document = stored(stack, task_id)
    assert document["status"] == "cancelled" and "upstream_job_id" not in document


def _provider_stub(stack: LocalStack, provider: str) -> provider_service_pb2_grpc.ProviderServiceStub:
    instance = next(instance for instance in read_instances(stack.redis()) if instance.provider == provider)
    return provider_service_pb2_grpc.ProviderServiceStub(grpc.insecure_channel(instance.address))


def test_openai_cancel_job_deletes_the_video_once_the_vendor_allows_it(stack: LocalStack) -> None:
    """The gateway refuses Sora at create (retired): CancelJob is proven at the provider's gRPC level, and the
    dispatcher's job that retries it through the real queue, against the simulator's Videos API."""
    provider = _provider_stub(stack, "openai")
    with faults(stack, "openai.videos.retrieve", video_seconds=3.0):
        submitted = provider.SubmitJob(
            provider_pb.SubmitJobRequest(
                input=provider_pb.GenerationInput(task_id="openai-cancel", model="sora-2", prompt="a kite")
            ),
            timeout=10,
        )
        video_id = submitted.upstream_job_id
        # Running: OpenAI deletes only a completed or failed video.
        with pytest.raises(grpc.RpcError) as refused:
            provider.CancelJob(provider_pb.CancelJobRequest(model="sora-2", upstream_job_id=video_id), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        deletes_before, retrieves_before = (
            requests_to(stack, "openai.videos.delete"),
            requests_to(stack, "openai.videos.retrieve"),
        )
        # The dispatcher's job tries again (every POLL_MAX_SECONDS) until the video has finished, then deletes it.
        job = shard_queue(stack.redis(), "critical", 0).enqueue(
            CANCEL_UPSTREAM, "openai-cancel", "openai", "sora-2", video_id, time.time(), **job_options("openai-cancel")
        )
        assert wait_until(lambda: finished(job), timeout=45) == "cancel-again"
        wait_until(lambda: logged(stack, "openai-cancel", "upstream job cancelled"), timeout=45)
    with stack.sim() as sim:
        stats = sim.stats()
    assert stats["openai.videos.delete"]["requests"] > deletes_before and stats["openai.videos.delete"]["ok"] == 1
    assert stats["openai.videos.retrieve"]["requests"] == retrieves_before  # never polled
    again = provider.CancelJob(provider_pb.CancelJobRequest(model="sora-2", upstream_job_id=video_id), timeout=10)
    assert again.cancelled and "already gone" in again.detail


# ---------------------------------------------------------------------------------------------------- refusals


def test_cancel_of_a_final_task_is_409_and_failed_precondition_naming_its_status(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    task_id = create(rest, user_id)
    assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"
    response = cancel(rest, task_id)
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == "FAILED_PRECONDITION" and "completed" in body["message"]
    with pytest.raises(grpc.RpcError) as refused:
        stack.task_stub().CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "completed" in refused.value.details()
    assert status_of(stack, task_id) == "completed"


def test_a_second_cancel_answers_the_same_cancelled_task(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    with dispatcher_stopped(stack):
        task_id = create(rest, user_id)
        first = cancel(rest, task_id, json={}).json()["data"]
    second = cancel(rest, task_id)
    assert second.status_code == 200 and second.json()["message"] == "task already cancelled"
    assert second.json()["data"] == first
    via_grpc = stack.task_stub().CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=10)
    assert via_grpc.data.status == "cancelled" and via_grpc.data.updated.ToJsonString() == first["updated"]


def test_another_users_task_and_an_unknown_one_are_404(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    with dispatcher_stopped(stack):
        task_id = create(rest, user_id)
        with stack.rest(stack.create_api_key(f"{user_id}-other")) as other:
            response = cancel(other, task_id)
        assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
        assert cancel(rest, "01J0000000000000000000000Z").status_code == 404
        assert status_of(stack, task_id) == "pending"
        assert cancel(rest, task_id).status_code == 200


def test_the_queue_tools_count_cancelled_tasks_and_never_requeue_one(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with dispatcher_stopped(stack):
        task_id = create(rest, user_id, priority="critical")
        job = waiting_job(stack, task_id)
        assert cancel(rest, task_id).status_code == 200
        # Its job, as if it had failed in a worker: in the failed registry instead of the queue.
        critical = shard_queue(stack.redis(), "critical", 0)
        critical.remove(job)
        critical.failed_job_registry.add(job, ttl=600, exc_string="worker died")
        try:
            result = admin(stack, "requeue-failed", "critical")
            assert result.returncode == 0, result.stderr
            # Its job among them (another test's job abandoned in a killed worker may be there too).
            skipped = re.search(r"skipped (\d+) whose task is final", result.stdout)
            assert skipped is not None and int(skipped.group(1)) >= 1, result.stdout
            assert job.id in critical.failed_job_registry.get_job_ids()
            assert job.id not in critical.get_job_ids()

            shown = admin(stack, "status", "--json")
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)[CANCELLED_TASKS]["user"] >= 1
            assert "cancelled tasks: " in admin(stack, "status").stdout
        finally:
            job.delete()
    assert status_of(stack, task_id) == "cancelled"


# ---------------------------------------------------------------------------------------------------- deadlines


def test_tasks_behind_a_backlog_end_cancelled_at_their_deadline_without_an_upstream_call(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    calls_before = requests_to(stack, IMAGES, user_id)
    with faults(stack, IMAGES, latency_s=4.0):
        # Four workers, eight slow tasks: the queue is busy for about eight seconds.
        backlog = [create(rest, user_id, prompt=f"backlog {n} {user_id}", priority="low") for n in range(8)]
        created = time.time()
        late = [
            create(rest, user_id, prompt=f"deadline {n} {user_id}", priority="low", deadline_seconds=1)
            for n in range(3)
        ]
        for task_id in late:
            assert (
                wait_for_status(rest, task_id, {"cancelled", "completed", "failed"}, timeout=6)["status"] == "cancelled"
            )
        assert time.time() - created < 6  # at about their deadline, not when the backlog cleared
        for task_id in late:
            document = stored(stack, task_id)
            assert document["cancel_reason"] == "deadline" and document["attempts"] == 0
            deadline: datetime = document["deadline"]
            assert (document["created"] - deadline).total_seconds() == pytest.approx(-1, abs=0.01)
            assert document["updated"] >= deadline
        for task_id in backlog:
            assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=30)["status"] == "completed"
    assert requests_to(stack, IMAGES, user_id) - calls_before == len(backlog)


def test_a_deadline_is_returned_and_a_task_that_meets_it_completes(rest: httpx.Client, user_id: str) -> None:
    task_id = create(rest, user_id, deadline_seconds=600)
    result = wait_for_status(rest, task_id, {"completed", "failed", "cancelled"})
    assert result["status"] == "completed" and result["cancel_reason"] == ""
    assert datetime.fromisoformat(result["deadline"]) > datetime.fromisoformat(result["created"])


def test_a_job_reaching_a_task_past_its_deadline_cancels_it_without_an_upstream_call(
    stack: LocalStack, in_process_runtime: Runtime, user_id: str
) -> None:
    """The claim-time check, run in-process on the stack (the reconciler's sweep is the other way in)."""
    rt = in_process_runtime
    calls_before = requests_to(stack, IMAGES, user_id)
    overdue = insert_task(
        rt, user_id, IMAGE, IMAGE_PARAMETERS, prompt=f"overdue {user_id}", deadline=utcnow() - timedelta(seconds=1)
    )
    assert process_task(overdue) == "deadline-passed"
    document = rt.tasks.get(overdue, user_id)
    assert document is not None and document["status"] == "cancelled" and document["cancel_reason"] == "deadline"
    assert document["attempts"] == 0
    assert not rt.redis.sismember(inflight_key(user_id), overdue) and rt.redis.zscore(WATCH_KEY, overdue) is None
    # A deadline still ahead does not stop the task.
    ahead = insert_task(
        rt, user_id, IMAGE, IMAGE_PARAMETERS, prompt=f"ahead {user_id}", deadline=utcnow() + timedelta(seconds=60)
    )
    assert process_task(ahead) == "completed"
    assert requests_to(stack, IMAGES, user_id) == calls_before + 1


@pytest.mark.parametrize("deadline", [0, -5, 604801, 10**12])
def test_a_bad_deadline_is_400_naming_the_field_and_stores_nothing(
    stack: LocalStack, rest: httpx.Client, user_id: str, deadline: int
) -> None:
    body = {"prompt": "never", "user_id": user_id, "deadline_seconds": deadline, **SEEDREAM}
    response = rest.post("/api/v1/ai/image/task", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_ARGUMENT" and "deadline_seconds" in response.json()["message"]
    assert stack.tasks().count_documents({"user_id": user_id}) == 0


# ---------------------------------------------------------------------------------------------------- chaos


def test_cancel_while_the_worker_is_killed_mid_call_pays_for_nothing_more(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    calls_before = requests_to(stack, IMAGES, user_id)
    with faults(stack, IMAGES, latency_s=3.0):
        task_id = create(rest, user_id)
        wait_until(lambda: requests_to(stack, IMAGES, user_id) > calls_before)  # the call is in flight
        stack.kill("dispatcher")
        assert cancel(rest, task_id).json()["data"]["status"] == "cancelled"
    restart_after_a_crash(stack)
    # The killed worker's lease (4 s) expires and reconciler passes (every 1 s) go by: nothing runs it again.
    wait_until(lambda: not stack.redis().exists(f"aitask:lease:{task_id}"), timeout=10)
    time.sleep(NO_POLL_WINDOW_SECONDS)  # nothing to wait for: the point is that nothing happens
    assert requests_to(stack, IMAGES, user_id) == calls_before + 1
    assert status_of(stack, task_id) == "cancelled"
    assert_forgotten(stack, task_id, user_id)


def test_cancel_while_redis_restarts_ends_cancelled_and_never_paid(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    calls_before = requests_to(stack, IMAGES, user_id)
    with dispatcher_stopped(stack):
        task_id = create(rest, user_id)
        job = waiting_job(stack, task_id)
        stack.stop("redis")
        try:
            response = cancel(rest, task_id)
        finally:
            stack.start("redis")
        assert response.status_code == 200, response.text
        assert response.json()["data"]["status"] == "cancelled"
    # The job survived the restart (append-only file): a worker takes it and ends it without a call.
    assert wait_until(lambda: finished(job), timeout=20) == "already-final"
    assert requests_to(stack, IMAGES, user_id) == calls_before
    assert status_of(stack, task_id) == "cancelled"
    # Its in-flight slot, left while Redis was down, is pruned by the reconciler.
    wait_until(lambda: not stack.redis().sismember(inflight_key(user_id), task_id), timeout=15)
