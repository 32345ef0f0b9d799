"""The reconciler tells a job that waits behind a backlog from a lost one (against the stack's real Redis)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from aitask_common.queues import POLLS_KEY, PROCESS_TASK, WATCH_JOBS_KEY, WATCH_KEY
from dispatcher_service.reconciler import Reconciler, in_flight_queries
from dispatcher_service.settings import DispatcherSettings
from tests.stack import LocalStack


def test_only_jobs_still_in_a_queue_or_schedule_count_as_waiting(stack: LocalStack) -> None:
    redis = stack.redis()
    # A queue no worker drains, so nothing moves while we look.
    backlog = Queue(f"reconciler-test-{uuid.uuid4().hex}", connection=redis, serializer=JSONSerializer)
    names = ("queued", "scheduled", "stalled", "popped", "finished", "unknown")
    tasks = {name: f"{name}-{uuid.uuid4().hex}" for name in names}
    jobs = {
        "queued": backlog.enqueue(PROCESS_TASK, tasks["queued"]),
        "scheduled": backlog.enqueue_in(timedelta(minutes=5), PROCESS_TASK, tasks["scheduled"]),
        # Due ten minutes ago and still in the schedule: no scheduler is moving it.
        "stalled": backlog.enqueue_in(timedelta(minutes=-10), PROCESS_TASK, tasks["stalled"]),
        "popped": backlog.enqueue(PROCESS_TASK, tasks["popped"]),
        "finished": backlog.enqueue(PROCESS_TASK, tasks["finished"]),
    }
    redis.lrem(backlog.key, 0, jobs["popped"].id)  # taken off the queue by a worker that then died
    redis.lrem(backlog.key, 0, jobs["finished"].id)
    jobs["finished"].set_status(JobStatus.FINISHED)
    redis.hset(WATCH_JOBS_KEY, mapping={tasks[name]: job.id for name, job in jobs.items()})
    try:
        reconciler = Reconciler(DispatcherSettings(), redis, stack.tasks())
        waiting = reconciler._jobs_still_waiting(list(tasks.values()), time.time())
        assert waiting == {tasks["queued"], tasks["scheduled"]}
    finally:
        redis.hdel(WATCH_JOBS_KEY, *tasks.values())
        backlog.empty()
        for name in ("scheduled", "stalled"):
            backlog.scheduled_job_registry.remove(jobs[name])


def test_a_task_waiting_for_its_poll_is_not_stuck(stack: LocalStack) -> None:
    redis = stack.redis()
    now = time.time()
    grace = DispatcherSettings().watch_grace_seconds
    polled, lost = f"polled-{uuid.uuid4().hex}", f"lost-{uuid.uuid4().hex}"
    # Both watch entries are long overdue; only one task has a poll entry (due in an hour, so no
    # poller of the stack takes it).
    redis.zadd(WATCH_KEY, {polled: now - 10 * grace, lost: now - 10 * grace})
    redis.zadd(POLLS_KEY, {polled: now + 3600})
    try:
        reconciler = Reconciler(DispatcherSettings(), redis, stack.tasks())
        unattended = reconciler._unattended([{"_id": polled}, {"_id": lost}], now)
        assert [task["_id"] for task, _ in unattended] == [lost]
    finally:
        redis.zrem(WATCH_KEY, polled, lost)
        redis.zrem(POLLS_KEY, polled)


def test_the_stuck_task_queries_are_filtered_inside_postgresql(stack: LocalStack) -> None:
    # A filter FerretDB cannot push down makes it read and decode every task in the collection on each pass.
    tasks = stack.tasks()
    for query in in_flight_queries(datetime.now(UTC)):
        plan = tasks.database.command("explain", {"find": tasks.name, "filter": query})
        assert plan["filterPushdown"] is True, (query, plan)
