"""The whole stack with QUEUE_SHARDS=3 on one Redis: tasks spread over three RQ namespaces, each under its own hash
tag, and every path that meets a task's queue state (its jobs, watch entry, polls, retries, cancels, the
reconciler, the queue tools and metrics) finds it in its shard."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from aitask_common.queue_shards import QueueShards, configured
from aitask_common.queues import QUEUE_ORDER, polls_key, shard_of, watch_jobs_key
from aitask_common.rq_shards import shard_queue
from devstack.processes import Ports
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.dispatcher_service.test_queue_admin import admin
from tests.e2e.helpers import GPT, JIMENG_VIDEO, SEEDREAM, create_task, faults, stop_dispatcher, wait_for_retry

SHARDS = QueueShards.layout(3, cluster=False)


@pytest.fixture(scope="module")
def sharded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(Ports.free(), tmp_path_factory.mktemp("sharded-stack"))
    local.env["QUEUE_SHARDS"] = str(SHARDS.count)
    try:
        local.start_all()
        yield local
    finally:
        local.stop_all()


@pytest.fixture(autouse=True)
def layout() -> Iterator[None]:
    """This process names keys as the stack's services do, for these tests only."""
    with configured(SHARDS):
        yield


@pytest.fixture
def rest(sharded_stack: LocalStack) -> Iterator[httpx.Client]:
    with sharded_stack.rest() as client:
        yield client


def finished_per_shard(stack: LocalStack, priority: str) -> list[int]:
    redis = stack.redis()
    return [shard_queue(redis, priority, shard).finished_job_registry.count for shard in SHARDS.shards()]


def test_every_model_runs_with_tasks_spread_over_the_shards(
    sharded_stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    before = finished_per_shard(sharded_stack, "default")
    images = [create_task(rest, user_id, "image", SEEDREAM) for _ in range(24)]
    text = create_task(rest, user_id, "text", GPT)
    video = create_task(rest, user_id, "video", JIMENG_VIDEO)
    assert {shard_of(task_id) for task_id in images} == {0, 1, 2}
    for task_id in [*images, text, video]:
        assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
    after = finished_per_shard(sharded_stack, "default")
    assert all(now > then for now, then in zip(after, before, strict=True)), (before, after)

    listed = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "limit": 50}).json()["data"]
    assert {task["task_id"] for task in listed["tasks"]} == {*images, text, video}
    assert rest.delete(f"/api/v1/ai/task/{images[0]}").status_code == 200
    assert rest.get(f"/api/v1/ai/task/result/{images[0]}").status_code == 404


def test_a_retry_is_scheduled_and_run_in_its_tasks_shard(
    sharded_stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with faults(sharded_stack, "ark.images", rate_limit_rate=1.0, retry_after_s=0.3):
        task_id = create_task(rest, user_id, "image", SEEDREAM)
        wait_for_retry(sharded_stack, task_id)
        job_id = sharded_stack.redis().hget(watch_jobs_key(shard_of(task_id)), task_id)
        assert job_id is not None and job_id.decode().startswith(SHARDS.tag(shard_of(task_id)))
    result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)
    assert result["status"] == "completed" and result["attempts"] >= 3


def test_a_video_is_polled_from_its_shard_and_a_cancel_takes_it_out(
    sharded_stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with faults(sharded_stack, "visual.CVSync2AsyncGetResult", video_seconds=30.0):
        task_id = create_task(rest, user_id, "video", JIMENG_VIDEO)
        polls = polls_key(shard_of(task_id))
        wait_until(lambda: sharded_stack.redis().zscore(polls, task_id) is not None, timeout=15)
        assert rest.post(f"/api/v1/ai/task/{task_id}/cancel").status_code == 200
        assert sharded_stack.redis().zscore(polls, task_id) is None
    assert wait_for_status(rest, task_id, {"cancelled"})["status"] == "cancelled"


def test_a_lost_job_is_found_by_the_reconciler_and_enqueued_again_in_its_shard(
    sharded_stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    stop_dispatcher(sharded_stack)
    try:
        task_id = create_task(rest, user_id, "image", SEEDREAM)
        shard = shard_of(task_id)
        redis = sharded_stack.redis()
        job_id = redis.hget(watch_jobs_key(shard), task_id).decode()
        # The job vanishes from its queue, as if Redis lost it between BLPOP and RQ's registry.
        assert redis.lrem(shard_queue(redis, "default", shard).key, 0, job_id) == 1
        Job.fetch(job_id, connection=redis, serializer=JSONSerializer).delete()
    finally:
        sharded_stack.start("dispatcher")
    assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
    assert "re-enqueueing stuck task" in sharded_stack.log_text("dispatcher")


def test_the_queue_tools_and_metrics_show_every_shard(sharded_stack: LocalStack) -> None:
    result = admin(sharded_stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    statuses = json.loads(result.stdout)
    for priority in QUEUE_ORDER:
        assert {SHARDS.queue_name(str(priority), shard) for shard in SHARDS.shards()} <= statuses.keys()
        assert statuses[str(priority)]["finished"] == sum(
            statuses[SHARDS.queue_name(str(priority), shard)]["finished"] for shard in SHARDS.shards()
        )
    metrics = httpx.get(f"http://127.0.0.1:{sharded_stack.ports.metrics_dispatcher}/metrics", trust_env=False).text
    assert {int(shard) for shard in re.findall(r'aitask_queue_depth\{[^}]*shard="(\d+)"', metrics)} == {0, 1, 2}


def test_fewer_shards_lose_no_queued_task_and_pay_for_none_twice(
    sharded_stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    stop_dispatcher(sharded_stack)
    try:
        tasks = [create_task(rest, user_id, "image", SEEDREAM) for _ in range(15)]
        stranded = [task_id for task_id in tasks if shard_of(task_id) == 2]
        assert stranded
        # A dispatcher told QUEUE_SHARDS=2 serves shards 0 and 1 only: shard 2's jobs wait where no worker looks.
        sharded_stack.start("dispatcher", {"QUEUE_SHARDS": "2"})
        for task_id in tasks:
            assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
    finally:
        stop_dispatcher(sharded_stack)
        sharded_stack.start("dispatcher")
    # The reconciler found each of them and enqueued it again in its shard under the new count.
    log = sharded_stack.log_text("dispatcher").splitlines()
    requeued = [line for line in log if "re-enqueueing stuck task" in line]
    assert all(any(task_id in line for line in requeued) for task_id in stranded)
    with sharded_stack.sim() as sim:
        calls = [call for call in sim.requests(user_id) if call["endpoint"] == "ark.images"]
    assert len(calls) == len(tasks)


def test_a_dispatcher_serving_one_shard_runs_that_shards_tasks_only(
    sharded_stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    stop_dispatcher(sharded_stack)
    try:
        # One Deployment per shard (deploy/queue_shards.py) runs dispatchers like this one.
        sharded_stack.start("dispatcher", {"QUEUE_SHARDS_SERVED": "1", "WORKER_CONCURRENCY": "2"})
        tasks = [create_task(rest, user_id, "image", SEEDREAM) for _ in range(12)]
        served = [task_id for task_id in tasks if shard_of(task_id) == 1]
        others = [task_id for task_id in tasks if shard_of(task_id) != 1]
        assert served and others
        for task_id in served:
            assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
        assert {rest.get(f"/api/v1/ai/task/result/{t}").json()["data"]["status"] for t in others} == {"pending"}
    finally:
        stop_dispatcher(sharded_stack)
        sharded_stack.start("dispatcher")
    for task_id in others:
        assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
