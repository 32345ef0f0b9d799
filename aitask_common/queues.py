"""The RQ queues: names, priority order, and the one way a task's job is enqueued.

Jobs carry only a task id and use RQ's JSON serializer: with pickle, anyone who
can write to Redis could run code in a worker.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.client import Pipeline
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
# Hash of in-flight task id -> id of its latest RQ job, so the reconciler can tell a job that
# merely waits in a long queue from a lost one.
WATCH_JOBS_KEY = "aitask:watch-jobs"

# Polls of running upstream jobs are not RQ jobs: a thread in every worker process claims the
# due ones from this sorted set (task id scored by due time, epoch seconds) and runs them, so a
# poll costs no RQ bookkeeping (dispatcher_service/polls.py). The hash holds each poll's hint.
POLLS_KEY = "aitask:polls"
POLL_HINTS_KEY = "aitask:poll-hints"

# Finished job records are only bookkeeping: MongoDB holds the outcome.
RESULT_TTL_SECONDS = 3600
FAILURE_TTL_SECONDS = 7 * 24 * 3600


def forget_finished(connection: Redis | Pipeline, task_id: str, user_id: str | None = None) -> None:
    """A task reached a final state (or is gone): drop it from the reconciler's watch set and, when
    its user is known, from the user's in-flight set. Given a pipeline, only adds the commands to it."""
    if not isinstance(connection, Pipeline):
        with connection.pipeline(transaction=False) as pipe:
            forget_finished(pipe, task_id, user_id)
            pipe.execute()
        return
    connection.zrem(WATCH_KEY, task_id)
    connection.hdel(WATCH_JOBS_KEY, task_id)
    connection.zrem(POLLS_KEY, task_id)
    connection.hdel(POLL_HINTS_KEY, task_id)
    if user_id is not None:
        connection.srem(inflight_key(user_id), task_id)


def queue(connection: Redis, priority: Priority | str) -> Queue:
    """The RQ queue for a priority, with the JSON serializer (one object per connection and priority)."""
    return _queue(connection, str(priority))


# Building a Queue checks its serializer against a typing.Protocol, which walks the protocol's MRO on every
# isinstance: about 4 % of the task service's CPU under create load, when it was built per enqueue.
@functools.lru_cache(maxsize=64)
def _queue(connection: Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)


def enqueue_task(
    connection: Redis,
    task_id: str,
    priority: Priority | str,
    delay: timedelta | None = None,
) -> Job:
    """Enqueue the job that processes `task_id` (after `delay`, when given) and note when it is due."""
    with connection.pipeline() as pipe:
        pipe.multi()  # RQ would start the MULTI itself, and refuses once a command is queued
        job = _queue_job(pipe, connection, task_id, priority, delay)
        pipe.execute()
    return job


def schedule_poll(connection: Redis, task_id: str, delay_seconds: float, hint: dict[str, Any]) -> None:
    """Poll the task's upstream job after `delay_seconds`, carrying `hint` (see `dispatcher_service.jobs`).

    The watch entry moves with the poll; the task has no RQ job while it waits for one.
    """
    due = time.time() + delay_seconds
    with connection.pipeline() as pipe:
        pipe.zadd(POLLS_KEY, {task_id: due})
        pipe.hset(POLL_HINTS_KEY, task_id, json.dumps(hint))
        pipe.zadd(WATCH_KEY, {task_id: due})
        pipe.hdel(WATCH_JOBS_KEY, task_id)
        pipe.execute()


def enqueue_tasks(connection: Redis, tasks: Iterable[tuple[str, Priority | str]]) -> list[Job]:
    """Enqueue the first job of each new (task_id, priority), all in one round trip."""
    with connection.pipeline() as pipe:
        pipe.multi()
        jobs = [_queue_job(pipe, connection, task_id, priority) for task_id, priority in tasks]
        pipe.execute()
    return jobs


def _queue_job(
    pipe: Pipeline,
    connection: Redis,
    task_id: str,
    priority: Priority | str,
    delay: timedelta | None = None,
) -> Job:
    """Add a task's job, its watch entry and its job id to a MULTI: all of them are stored, or none."""
    due = time.time() + (delay.total_seconds() if delay else 0.0)
    target = queue(connection, priority)
    options: dict[str, Any] = {
        "result_ttl": RESULT_TTL_SECONDS,
        "failure_ttl": FAILURE_TTL_SECONDS,
        "description": f"task {task_id}",
        "pipeline": pipe,
    }
    pipe.zadd(WATCH_KEY, {task_id: due})
    if delay is not None:
        job = target.enqueue_in(delay, PROCESS_TASK, task_id, **options)
    else:
        job = target.enqueue(PROCESS_TASK, task_id, **options)
    pipe.hset(WATCH_JOBS_KEY, task_id, job.id)
    return job
