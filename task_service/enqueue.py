"""Enqueueing created tasks' first jobs: concurrent creates share one Redis round trip."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable
from typing import NamedTuple

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from aitask_common import fair_share
from aitask_common.queues import (
    PROCESS_TASK,
    WATCH_KEY,
    Priority,
    job_options,
    process_task_arguments,
    take_number,
    watch_job,
)
from aitask_common.tracing import current_carrier
from task_service.batching import Batcher

# Most jobs one pipeline carries.
ENQUEUE_BATCH_MAX = 256


class NewTask(NamedTuple):
    """A created task to enqueue: given its user, it takes a fair share of its priority's queue; `trace` is the
    create's trace context, carried in the job (aitask_common.tracing)."""

    task_id: str
    priority: Priority | str
    user_id: str | None = None
    trace: dict[str, str] | None = None


class TaskQueue:
    """Enqueues new tasks' jobs; a failed round trip fails every task of its batch (RedisError)."""

    def __init__(self, connection: Redis, fair_share_depth: int = 0) -> None:
        self.connection = connection
        self.fair_share_depth = fair_share_depth
        # Started and stopped with the server (task_service.server).
        self.batcher = Batcher("enqueue", self._enqueue_batch, ENQUEUE_BATCH_MAX)

    async def enqueue(self, task_id: str, priority: Priority | str, user_id: str | None = None) -> None:
        """Enqueue one task's job (sharing the round trip with whatever else is waiting); given its user, the
        task takes its fair share (aitask_common.fair_share)."""
        await self.batcher.submit(NewTask(task_id, priority, user_id, current_carrier()))

    async def _enqueue_batch(self, tasks: list[NewTask]) -> None:
        # The client is synchronous: one thread hop per batch, not per task.
        await asyncio.to_thread(enqueue_tasks, self.connection, tasks, self.fair_share_depth)


def enqueue_tasks(connection: Redis, tasks: Iterable[NewTask], fair_share_depth: int = 0) -> list[Job]:
    """Enqueue the first job of each new task, with its watch entry and its number in the queue
    (aitask_common.queues), all in one MULTI. With a `fair_share_depth` (aitask_common.fair_share), a task
    whose user already has that many first jobs waiting in its queue joins the user's backlog instead (one
    round trip before); its watch entry is written all the same."""
    now = time.time()
    tasks = list(tasks)
    admitted = [True] * len(tasks)
    fair = [index for index, task in enumerate(tasks) if task.user_id is not None] if fair_share_depth > 0 else []
    if fair:
        with connection.pipeline(transaction=False) as admissions:
            for index in fair:
                task_id, priority, user_id, _ = tasks[index]
                fair_share.admit(admissions, task_id, str(priority), str(user_id), fair_share_depth, now)
            for index, reply in zip(fair, admissions.execute(), strict=True):
                admitted[index] = bool(reply)
    with connection.pipeline() as pipe:
        pipe.multi()  # RQ would start the MULTI itself, and refuses once a command is queued
        jobs = []
        for (task_id, priority, user_id, trace), enqueue_now in zip(tasks, admitted, strict=True):
            if enqueue_now:
                options = job_options(task_id, trace)
                arguments = process_task_arguments(task_id, user_id)
                job = queue(connection, priority).enqueue(PROCESS_TASK, *arguments, **options, pipeline=pipe)
                watch_job(pipe, task_id, job.id, now)
                jobs.append(job)
            else:
                pipe.zadd(WATCH_KEY, {task_id: now})
            take_number(pipe, task_id, priority)
        pipe.execute()
    return jobs


def queue(connection: Redis, priority: Priority | str) -> Queue:
    """The RQ queue for a priority, with the JSON serializer (one object per connection and priority)."""
    return _queue(connection, str(priority))


# Building a Queue checks its serializer against a typing.Protocol, which walks the protocol's MRO on every
# isinstance: about 4 % of the task service's CPU under create load, when it was built per enqueue.
@functools.lru_cache(maxsize=64)
def _queue(connection: Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)
