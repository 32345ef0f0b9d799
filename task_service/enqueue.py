"""Enqueueing created tasks' first jobs: concurrent creates share one Redis round trip."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from aitask_common.queues import PROCESS_TASK, Priority, job_options, take_number, watch_job
from task_service.batching import Batcher

# Most jobs one pipeline carries.
ENQUEUE_BATCH_MAX = 256


class TaskQueue:
    """Enqueues new tasks' jobs; a failed round trip fails every task of its batch (RedisError)."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        # Started and stopped with the server (task_service.server).
        self.batcher = Batcher("enqueue", self._enqueue_batch, ENQUEUE_BATCH_MAX)

    async def enqueue(self, task_id: str, priority: Priority | str) -> None:
        """Enqueue one task's job (sharing the round trip with whatever else is waiting)."""
        await self.batcher.submit((task_id, priority))

    async def _enqueue_batch(self, tasks: list[tuple[str, Priority | str]]) -> None:
        # The client is synchronous: one thread hop per batch, not per task.
        await asyncio.to_thread(enqueue_tasks, self.connection, tasks)


def enqueue_tasks(connection: Redis, tasks: Iterable[tuple[str, Priority | str]]) -> list[Job]:
    """Enqueue the first job of each new (task_id, priority), with its watch entry and its number in the queue
    (aitask_common.queues), all in one MULTI."""
    now = time.time()
    with connection.pipeline() as pipe:
        pipe.multi()  # RQ would start the MULTI itself, and refuses once a command is queued
        jobs = []
        for task_id, priority in tasks:
            job = queue(connection, priority).enqueue(PROCESS_TASK, task_id, **job_options(task_id), pipeline=pipe)
            watch_job(pipe, task_id, job.id, now)
            take_number(pipe, task_id, priority)
            jobs.append(job)
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
