"""`python -m dispatcher_service.queue_admin` against the real stack, run as an operator would: a subprocess.

The dispatcher is stopped while a test runs, so the jobs a test makes stay where it put them; it is
stopped only once the queues are empty, because `clear` empties whole queues and must not touch
another test's work.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from aitask_common.queues import WATCH_KEY
from aitask_common.rq_shards import shard_queue
from aitask_common.tasks import inflight_key
from devstack.processes import ROOT
from devstack.stack import LocalStack
from dispatcher_service.lease import LEASE_KEY_PREFIX
from dispatcher_service.queue_admin import OLDEST_AGE, QUEUE_NAMES, STATES
from dispatcher_service.schedule import enqueue_task
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM, stop_dispatcher

ADMIN = [sys.executable, "-m", "dispatcher_service.queue_admin"]
# A job no worker can import: running it is a real way into RQ's FailedJobRegistry.
MISSING_FUNCTION = "tests.dispatcher_service.no_such_module.no_such_function"
LATER = timedelta(seconds=600)


def admin(stack: LocalStack, *args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI with the stack's REDIS_URL / MONGO_URL, typing `answer` on its stdin."""
    return subprocess.run(
        [*ADMIN, *args], cwd=ROOT, env=stack.env, input=answer, capture_output=True, text=True, timeout=120
    )


def status(stack: LocalStack) -> dict[str, dict[str, Any]]:
    """`status --json`, parsed."""
    result = admin(stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def waiting_jobs(redis: Redis) -> int:
    """Queued plus scheduled jobs over every queue."""
    return sum(
        shard_queue(redis, name, 0).count + shard_queue(redis, name, 0).scheduled_job_registry.count
        for name in QUEUE_NAMES
    )


@contextmanager
def dispatcher_stopped(stack: LocalStack) -> Iterator[Redis]:
    """Stop the dispatcher with every queue empty (a job finishing during shutdown may enqueue its next
    step: then run it and try again); start it again afterwards."""
    redis = stack.redis()
    for _ in range(5):
        wait_until(lambda: waiting_jobs(redis) == 0, timeout=60)
        stop_dispatcher(stack)
        if waiting_jobs(redis) == 0:
            break
        stack.start("dispatcher")
    else:
        raise AssertionError("the queues never stayed empty while the dispatcher stopped")
    try:
        yield redis
    finally:
        stack.start("dispatcher")


def create_task(rest: httpx.Client, user_id: str, priority: str) -> str:
    """An image task through REST; its job waits in the `priority` queue."""
    body = {"prompt": f"a lighthouse, {priority}", "user_id": user_id, "priority": priority, **SEEDREAM}
    response = rest.post("/api/v1/ai/image/task", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def fail_a_job(redis: Redis, name: str) -> Job:
    """Put one job into queue `name`'s FailedJobRegistry by running it with a real RQ worker."""
    target = shard_queue(redis, name, 0)
    job = target.enqueue(MISSING_FUNCTION, "no-task", failure_ttl=600)
    # The burst worker runs whatever the queue holds: it must hold only this job.
    assert target.get_job_ids() == [job.id]
    SimpleWorker([target], connection=redis, serializer=JSONSerializer).work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.FAILED
    return job


def task_states(stack: LocalStack, task_ids: list[str]) -> dict[str, tuple[str, str]]:
    """task id -> (status, error_message) as stored in MongoDB."""
    documents = stack.tasks().find({"_id": {"$in": task_ids}}, {"status": 1, "error_message": 1})
    return {document["_id"]: (document["status"], document.get("error_message", "")) for document in documents}


def test_status_counts_jobs_per_queue_and_state(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    with dispatcher_stopped(stack) as redis:
        # The burst worker cleans the registries when it starts; clean them first so the baseline is what it sees.
        for name in QUEUE_NAMES:
            clean_registries(shard_queue(redis, name, 0))
        before = status(stack)
        failed_job = fail_a_job(redis, "critical")
        scheduled_job: Job | None = None
        try:
            posted = time.time()
            first_low = create_task(rest, user_id, "low")
            first_low_created = time.time()
            create_task(rest, user_id, "low")
            create_task(rest, user_id, "default")
            create_task(rest, user_id, "critical")
            scheduled_job = enqueue_task(redis, first_low, "low", LATER)
            time.sleep(1.0)

            asked = time.time()
            after = status(stack)
            answered = time.time()

            expected = {name: {state: before[name][state] for state in STATES} for name in QUEUE_NAMES}
            expected["critical"]["queued"] += 1
            expected["critical"]["failed"] += 1
            expected["default"]["queued"] += 1
            expected["low"]["queued"] += 2
            expected["low"]["scheduled"] += 1
            assert {name: {state: after[name][state] for state in STATES} for name in QUEUE_NAMES} == expected
            # The oldest low job is the first one posted; clocks are the same host's.
            assert before["low"][OLDEST_AGE] is None
            assert asked - first_low_created - 0.1 <= after["low"][OLDEST_AGE] <= answered - posted + 0.1
            assert after["low"][OLDEST_AGE] > after["critical"][OLDEST_AGE] > 0

            # With no command the same numbers come as a table.
            table = admin(stack)
            assert table.returncode == 0, table.stderr
            rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()}
            assert rows["queue"][: len(STATES)] == list(STATES)
            assert rows["low"][: len(STATES)] == [str(after["low"][state]) for state in STATES]
        finally:
            failed_job.delete()
            if scheduled_job is not None:
                scheduled_job.delete()


def test_clear_asks_then_fails_the_pending_tasks_it_unqueues(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with dispatcher_stopped(stack) as redis:
        low_tasks = [create_task(rest, user_id, "low"), create_task(rest, user_id, "low")]
        other_queue_task = create_task(rest, user_id, "default")
        # A retry-like second job of the same task, scheduled: the task is failed once, both jobs go.
        scheduled_job = enqueue_task(redis, low_tasks[0], "low", LATER)
        low_job_ids = [*shard_queue(redis, "low", 0).get_job_ids(), scheduled_job.id]

        refused = admin(stack, "clear", "low", answer="no\n")
        assert refused.returncode == 1
        assert "aborted" in refused.stdout
        unchanged = status(stack)
        assert (unchanged["low"]["queued"], unchanged["low"]["scheduled"]) == (2, 1)
        assert {state for state, _ in task_states(stack, low_tasks).values()} == {"pending"}
        assert None not in [redis.zscore(WATCH_KEY, task_id) for task_id in low_tasks]
        assert redis.smembers(inflight_key(user_id)) == {task_id.encode() for task_id in [*low_tasks, other_queue_task]}

        cleared = admin(stack, "clear", "low", answer="low\n")
        assert cleared.returncode == 0, cleared.stderr
        assert "low: removed 3 jobs, failed 2 tasks" in cleared.stdout
        after = status(stack)
        assert (after["low"]["queued"], after["low"]["scheduled"]) == (0, 0)
        assert after["default"]["queued"] == 1
        message = "cancelled by an operator: queue low cleared"
        assert task_states(stack, low_tasks) == {task_id: ("failed", message) for task_id in low_tasks}
        assert task_states(stack, [other_queue_task])[other_queue_task][0] == "pending"
        # Finished as a worker would finish them: out of the reconciler's watch set and the user's in-flight cap.
        assert [redis.zscore(WATCH_KEY, task_id) for task_id in low_tasks] == [None, None]
        assert redis.smembers(inflight_key(user_id)) == {other_queue_task.encode()}
        assert redis.exists(*(Job.key_for(job_id) for job_id in low_job_ids)) == 0
    assert wait_for_status(rest, other_queue_task, {"completed", "failed"})["status"] == "completed"


def test_clear_with_requeue_gives_the_tasks_a_new_job_instead(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with dispatcher_stopped(stack) as redis:
        low_task = create_task(rest, user_id, "low")
        critical_task = create_task(rest, user_id, "critical")
        scheduled_job = enqueue_task(redis, low_task, "low", LATER)
        old_job_ids = [
            *shard_queue(redis, "low", 0).get_job_ids(),
            *shard_queue(redis, "critical", 0).get_job_ids(),
            scheduled_job.id,
        ]

        cleared = admin(stack, "clear", "all", "--force", "--requeue")
        assert cleared.returncode == 0, cleared.stderr
        assert cleared.stdout.splitlines() == [
            "critical: removed 1 jobs, requeued 1 tasks",
            "default: removed 0 jobs, requeued 0 tasks",
            "low: removed 2 jobs, requeued 1 tasks",
        ]
        after = status(stack)
        assert (after["low"]["queued"], after["low"]["scheduled"], after["critical"]["queued"]) == (1, 0, 1)
        for name, task_id in (("low", low_task), ("critical", critical_task)):
            (new_job,) = shard_queue(redis, name, 0).get_jobs()
            assert new_job.args == [task_id, user_id]  # the task and its user (the shard key)
            assert new_job.id not in old_job_ids
        assert redis.exists(*(Job.key_for(job_id) for job_id in old_job_ids)) == 0
        assert task_states(stack, [low_task, critical_task]) == {
            low_task: ("pending", ""),
            critical_task: ("pending", ""),
        }
    for task_id in (low_task, critical_task):
        assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"


def test_clear_keeps_the_job_of_a_task_a_worker_holds(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    with dispatcher_stopped(stack) as redis:
        task_id = create_task(rest, user_id, "default")
        # A worker's lease: that worker may have enqueued this job as its task's next step.
        lease_key = LEASE_KEY_PREFIX + task_id
        redis.set(lease_key, "another-worker", px=60_000)
        try:
            cleared = admin(stack, "clear", "default", "--force")
        finally:
            redis.delete(lease_key)
        assert cleared.returncode == 0, cleared.stderr
        assert "default: removed 0 jobs, failed 0 tasks, kept 1 jobs" in cleared.stdout
        assert status(stack)["default"]["queued"] == 1
        assert task_states(stack, [task_id])[task_id][0] == "pending"
    assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"


def test_requeue_failed_puts_failed_jobs_back_on_their_queue(stack: LocalStack) -> None:
    with dispatcher_stopped(stack) as redis:
        job = fail_a_job(redis, "default")
        try:
            registry = shard_queue(redis, "default", 0).failed_job_registry
            failed_ids = registry.get_job_ids()
            assert job.id in failed_ids

            result = admin(stack, "requeue-failed", "default")
            assert result.returncode == 0, result.stderr
            # A job an earlier test left failed counts too, requeued or (its task final) skipped.
            line = r"default: requeued (\d+) failed jobs(?:, skipped (\d+) whose task is final)?"
            counts = re.search(line, result.stdout)
            assert counts is not None, result.stdout
            assert int(counts[1]) + int(counts[2] or 0) == len(failed_ids) and int(counts[1]) >= 1, result.stdout
            after = status(stack)
            assert after["default"]["failed"] == int(counts[2] or 0)  # the skipped stay
            assert job.id in shard_queue(redis, "default", 0).get_job_ids()
            assert job.get_status(refresh=True) == JobStatus.QUEUED
        finally:
            # Would only fail again once the dispatcher is back.
            job.delete()
