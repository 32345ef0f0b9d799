"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from redis import Redis
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from aitask_common.queues import PROCESS_TASK, QUEUE_ORDER, WATCH_JOBS_KEY
from aitask_common.rq_shards import shard_queue
from devstack.processes import Process, free_port
from devstack.stack import LocalStack
from dispatcher_service.durations import DURATIONS_KEY
from tests.conftest import wait_until

SEEDREAM = {"provider": "volcengine", "model": "doubao-seedream-3-0-t2i-250415"}
JIMENG_VIDEO = {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}
GPT = {"provider": "openai", "model": "gpt-4"}


def create_task(rest: httpx.Client, user_id: str, path: str, model: dict[str, str], **fields: object) -> str:
    """Create one task of `model` over REST (`path`: image, video or text) for `user_id`; its id. The prompt names
    the user, so the simulator's requests can be told apart by test."""
    body = {"prompt": f"a task of {user_id}", "user_id": user_id, **model, **fields}
    response = rest.post(f"/api/v1/ai/{path}/task", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def waiting_job_task_ids(stack: LocalStack) -> list[str]:
    """Task ids of every job that runs a task and is queued or scheduled (not yet run). A cancelled video's
    cancel-upstream job is left out: it may outlive its task (a test deleting the task behind the gateway)."""
    redis = stack.redis()
    job_ids: list[str] = []
    for name in QUEUE_ORDER:
        job_ids += shard_queue(redis, name, 0).get_job_ids()
        job_ids += ScheduledJobRegistry(str(name), connection=redis, serializer=JSONSerializer).get_job_ids()
    jobs = Job.fetch_many(job_ids, connection=redis, serializer=JSONSerializer)
    return [job.args[0] for job in jobs if job is not None and job.func_name == PROCESS_TASK]


def job_whereabouts(stack: LocalStack, task_ids: set[str]) -> dict[str, str]:
    """For a failure message: where each task's job is (its RQ status, the worker that took it), and the task's
    own status."""
    redis = stack.redis()
    whereabouts = {}
    for task_id in sorted(task_ids):
        job_id = redis.hget(WATCH_JOBS_KEY, task_id)
        job = Job.fetch_many([job_id.decode()], connection=redis, serializer=JSONSerializer)[0] if job_id else None
        document = stack.tasks().find_one({"_id": task_id}, {"status": 1}) or {}
        whereabouts[task_id] = f"task {document.get('status')}, job {job_id and job_id.decode()}: " + (
            f"{job.get_status()} by {job.worker_name!r} at {job.started_at}" if job else "no record"
        )
    return whereabouts


def assert_every_waiting_job_has_a_task(stack: LocalStack) -> None:
    """No job may point at a task that does not exist (a half-written create)."""
    task_ids = waiting_job_task_ids(stack)
    existing = {document["_id"] for document in stack.tasks().find({"_id": {"$in": task_ids}}, {"_id": 1})}
    assert set(task_ids) <= existing, f"jobs without tasks: {set(task_ids) - existing}"


def wait_for_retry(stack: LocalStack, task_id: str) -> dict[str, Any]:
    """The task once two attempts have failed and it waits, pending, for its retry (its document)."""
    return wait_until(
        lambda: (
            (doc := stack.tasks().find_one({"_id": task_id}))
            and doc["attempts"] >= 2
            and doc["status"] == "pending"
            and doc
        )
    )


def ensure_running(stack: LocalStack, *names: str) -> None:
    """Start whichever of `names` is not running (a chaos test's `finally`: leave the stack as it was found)."""
    for name in names:
        process = stack.running.get(name)
        if process is None or process.poll() is not None:
            stack.start(name)


def upstream_calls(stack: LocalStack, marker: str, endpoint: str) -> int:
    """How many requests carrying `marker` (a word in the test's prompt) reached the simulator's `endpoint`."""
    with stack.sim() as sim:
        return sum(call["endpoint"] == endpoint for call in sim.requests(marker))


def restart_after_a_crash(stack: LocalStack) -> None:
    """Start a SIGKILLed dispatcher again (if it is not running), without the dead scheduler's locks.

    RQ's scheduler lock outlives a killed dispatcher by up to 61 s, and the new workers ask for it again only at
    RQ's maintenance (every 10 min): until then delayed jobs and retries run only through the reconciler, in the
    crash test and in the tests after it. A chaos test leaves the stack as it found it: with a scheduler.
    """
    process = stack.running.get("dispatcher")
    if process is not None and process.poll() is None:
        return
    redis = stack.redis()
    stale_locks = list(redis.scan_iter("rq:scheduler-lock:*"))
    if stale_locks:
        redis.delete(*stale_locks)
    stack.start("dispatcher")


# Commands an idle RQ worker blocks in, waiting for a job.
RQ_POPS = {"blpop", "blmove", "brpoplpush"}


def blocked_pops(redis: Redis) -> int:
    """Connections blocked in a queue pop (RQ workers waiting for a job)."""
    return sum(1 for client in redis.client_list() if "b" in client["flags"] and client["cmd"] in RQ_POPS)


def stop_dispatcher(stack: LocalStack) -> None:
    """Stop the dispatcher, and wait until Redis has let go of its workers' blocking pops: a job pushed while a
    stopped worker's BLPOP lingers there would vanish with it (the reconciler finds it, seconds later)."""
    stack.stop("dispatcher")
    redis = stack.redis()
    wait_until(lambda: blocked_pops(redis) == 0, timeout=10)


@contextmanager
def openai_videos_provider(stack: LocalStack) -> Iterator[None]:
    """provider_openai with a catalogue that serves sora-2 as provider "openai-videos"
    (tests/e2e/provider_openai_videos): the gateway's own catalogue lists Sora as retired. The durations the
    dispatcher learned from earlier tests' videos are forgotten: with them it would poll a new video first near
    its likely end, and a test watching its progress would see none."""
    stack.redis().hdel(DURATIONS_KEY, "openai-videos/sora-2")
    openai = stack.definitions["provider_openai"]
    port = free_port()
    env = openai.env | {"OPENAI_PROVIDER_PORT": str(port), "METRICS_PORT": "0"}
    stack.definitions["provider_openai_videos"] = Process(
        "provider_openai_videos", [sys.executable, "-m", "tests.e2e.provider_openai_videos"], env, port
    )
    stack.start("provider_openai_videos")
    try:
        yield
    finally:
        stack.stop("provider_openai_videos")


@contextmanager
def faults(stack: LocalStack, endpoint: str, **settings: object) -> Iterator[None]:
    """The simulator's `endpoint` misbehaves as `settings` say (see its control API) until the block ends."""
    with stack.sim() as sim:
        sim.set_faults(endpoint, **settings)
    try:
        yield
    finally:
        with stack.sim() as sim:
            sim.clear_faults()
