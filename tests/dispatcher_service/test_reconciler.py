"""The reconciler tells a job that waits behind a backlog from a lost one (against the stack's real Redis)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from structlog.testing import capture_logs
from ulid import ULID

from aitask_common.queues import POLLS_KEY, PROCESS_TASK, WATCH_JOBS_KEY, WATCH_KEY
from aitask_common.rq_shards import shard_queue
from aitask_common.tasks import INFLIGHT_USERS_KEY, TaskStatus, inflight_key, utcnow
from devstack.stack import LocalStack
from dispatcher_service.reconciler import CREATE_GRACE_SECONDS, Reconciler, in_flight_query, user_in_flight_query
from dispatcher_service.settings import DispatcherSettings


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


def test_the_stuck_task_query_is_filtered_inside_postgresql(stack: LocalStack) -> None:
    # A filter FerretDB cannot push down makes it read and decode every task in the collection on each pass.
    tasks = stack.tasks()
    query = in_flight_query(datetime.now(UTC))
    plan = tasks.database.command("explain", {"find": tasks.name, "filter": query})
    assert plan["filterPushdown"] is True, (query, plan)


DEFAULT_PRIORITY = {"parameters": {"priority": "default"}}
RECONCILER_DB = 7  # a Redis database no service uses, so the stack's own reconciler never sees these keys


def test_in_flight_sets_lose_final_and_long_gone_tasks_and_keep_the_rest(stack: LocalStack) -> None:
    redis = Redis(port=stack.ports.redis, db=RECONCILER_DB)
    redis.flushdb()
    tasks = stack.mongo()["aitask_reconciler_test"]["tasks"]
    now = time.time()
    user = f"user-{uuid.uuid4().hex[:8]}"
    ids = {
        name: str(ULID.from_timestamp(now - age))
        for name, age in [
            ("pending", 600),
            ("processing", 600),
            ("completed", 600),
            ("failed", 5),
            ("gone", CREATE_GRACE_SECONDS + 10),
            ("being-created", 5),
        ]
    }
    # "completed" turned final long ago: its slot was left behind. "failed" did so just now: its worker is about
    # to free the slot itself. Both are freed; only the first is worth a warning.
    documents = [
        {"_id": ids[status], "user_id": user, "status": status, "updated": utcnow() - timedelta(seconds=age)}
        | ({} if TaskStatus(status).is_final else {"in_flight": True})
        for status, age in (("pending", 600), ("processing", 600), ("completed", 600), ("failed", 0))
    ]
    tasks.insert_many(documents)
    redis.sadd(inflight_key(user), *ids.values())
    idle = f"idle-{uuid.uuid4().hex[:8]}"  # every task of theirs finished: an empty set
    redis.sadd(INFLIGHT_USERS_KEY, user, idle)
    redis.zadd(WATCH_KEY, {ids["completed"]: now - 100})
    try:
        reconciler = Reconciler(DispatcherSettings(), redis, tasks)
        with capture_logs() as logs:
            assert reconciler._prune_inflight(now) == 3
        warned = {entry["task_id"] for entry in logs if entry["log_level"] == "warning"}
        assert warned == {ids["completed"], ids["gone"]}
        left = {member.decode() for member in redis.smembers(inflight_key(user))}
        assert left == {ids["pending"], ids["processing"], ids["being-created"]}
        assert redis.zscore(WATCH_KEY, ids["completed"]) is None  # forgotten altogether
        assert redis.smembers(INFLIGHT_USERS_KEY) == {user.encode()}  # the idle user left the index
        assert reconciler._prune_inflight(now) == 0
    finally:
        redis.flushdb()
        tasks.database.client.drop_database(tasks.database.name)


def test_the_in_flight_set_query_is_filtered_inside_postgresql(stack: LocalStack) -> None:
    tasks = stack.tasks()
    query = user_in_flight_query("user-1")
    plan = tasks.database.command("explain", {"find": tasks.name, "filter": query})
    assert plan["filterPushdown"] is True, (query, plan)


OWNER = {"user_id": "user-reconciler"}


def step_count(step: str) -> float:
    """How many times the reconciler step `step` was timed in this process."""
    return REGISTRY.get_sample_value("aitask_reconciler_step_seconds_count", {"step": step}) or 0.0


def test_a_task_left_processing_goes_back_at_the_front_of_its_queue(stack: LocalStack) -> None:
    redis = Redis(port=stack.ports.redis, db=RECONCILER_DB)
    redis.flushdb()
    tasks = stack.mongo()["aitask_reconciler_test"]["tasks"]
    backlog = shard_queue(redis, "default", 0)
    waiting = [backlog.enqueue(PROCESS_TASK, f"backlog-{n}").id for n in range(3)]
    long_ago = utcnow() - timedelta(minutes=10)
    orphan, lost, landed = (f"{name}-{uuid.uuid4().hex}" for name in ("orphan", "lost", "landed"))
    tasks.insert_many(
        [
            {
                "_id": orphan,
                "user_id": "user-r",
                "status": "processing",
                "updated": long_ago,
                "in_flight": True,
                **DEFAULT_PRIORITY,
            },
            {
                "_id": lost,
                "user_id": "user-r",
                "status": "pending",
                "updated": long_ago,
                "in_flight": True,
                **DEFAULT_PRIORITY,
            },
            # Finished by a dispatcher from before in_flight existed, after the migration marked it.
            {
                "_id": landed,
                "user_id": "user-r",
                "status": "completed",
                "updated": long_ago,
                "in_flight": True,
                **DEFAULT_PRIORITY,
            },
        ]
    )
    steps = ("expire_overdue", "requeue_stuck", "prune_watch", "prune_inflight", "settle")
    passes_before = {step: step_count(step) for step in steps}
    try:
        reconciler = Reconciler(DispatcherSettings(reconcile_min_age_seconds=0), redis, tasks)
        assert reconciler.run_once() == 2
        # Each step of the pass was timed once; with no ledger there is nothing to settle.
        assert {step: step_count(step) - passes_before[step] for step in steps} == dict.fromkeys(steps[:-1], 1) | {
            "settle": 0
        }
        order = [job.args[0] for job in backlog.get_jobs()]
        # The started one before everything already waiting, the merely lost one after it.
        assert order[0] == orphan and order[-1] == lost
        assert [job_id for job_id in backlog.get_job_ids() if job_id in waiting] == waiting
        assert "in_flight" not in tasks.find_one({"_id": landed}) and landed not in order
    finally:
        redis.flushdb()
        tasks.database.client.drop_database(tasks.database.name)
