"""The RQ queues: names, priority order, and the one way a task's job is enqueued.

Jobs carry only a task id and use RQ's JSON serializer: with pickle, anyone who
can write to Redis could run code in a worker.
"""

from __future__ import annotations

import time
from datetime import timedelta
from enum import StrEnum

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from aitask_common.tasks import inflight_key


class Priority(StrEnum):
    """Queue names; workers drain them in declaration order."""

    CRITICAL = "critical"
    DEFAULT = "default"
    LOW = "low"


QUEUE_ORDER = [Priority.CRITICAL, Priority.DEFAULT, Priority.LOW]

# Referenced by name so the task service never imports dispatcher code.
PROCESS_TASK = "dispatcher_service.jobs.process_task"

# Sorted set of in-flight task ids scored by when their next job is due (epoch
# seconds): the reconciler re-enqueues a task that is long overdue, which covers a
# job lost between BLPOP and RQ's registry, a worker killed mid-task, and a Redis
# that restarted empty (the set is gone too, so nothing counts as scheduled).
WATCH_KEY = "aitask:watch"

# Finished job records are only bookkeeping: MongoDB holds the outcome.
RESULT_TTL_SECONDS = 3600
FAILURE_TTL_SECONDS = 7 * 24 * 3600


def forget_finished(connection: Redis, task_id: str, user_id: str) -> None:
    """A task reached a final state: drop it from the reconciler's watch set and its user's in-flight set."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.zrem(WATCH_KEY, task_id)
        pipe.srem(inflight_key(user_id), task_id)
        pipe.execute()


def queue(connection: Redis, priority: Priority | str) -> Queue:
    """The RQ queue for a priority, with the JSON serializer."""
    return Queue(str(priority), connection=connection, serializer=JSONSerializer)


def enqueue_task(connection: Redis, task_id: str, priority: Priority | str, delay: timedelta | None = None) -> Job:
    """Enqueue the job that processes `task_id` (after `delay`, when given) and note when it is due."""
    due = time.time() + (delay.total_seconds() if delay else 0.0)
    connection.zadd(WATCH_KEY, {task_id: due})
    target = queue(connection, priority)
    options = {
        "result_ttl": RESULT_TTL_SECONDS,
        "failure_ttl": FAILURE_TTL_SECONDS,
        "description": f"task {task_id}",
    }
    if delay is not None:
        return target.enqueue_in(delay, PROCESS_TASK, task_id, **options)
    return target.enqueue(PROCESS_TASK, task_id, **options)
