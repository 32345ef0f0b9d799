"""Enqueueing created tasks' first jobs: concurrent creates share one Redis round trip."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from redis import Redis
from rq.job import Job

from aitask_common import fair_share
from aitask_common.queues import (
    PROCESS_TASK,
    Priority,
    job_options,
    process_task_arguments,
    shard_of,
    take_number,
    watch_job,
    watch_key,
)
from aitask_common.redis_clients import rq_connection
from aitask_common.rq_shards import job_id_option, shard_queue
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
    (aitask_common.queues), all in one MULTI per queue shard (aitask_common.queue_shards). With a
    `fair_share_depth` (aitask_common.fair_share), a task whose user already has that many first jobs waiting in
    its queue joins the user's backlog instead (one round trip before); its watch entry is written all the same."""
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
    by_shard: dict[int, list[tuple[NewTask, bool]]] = defaultdict(list)
    for task, enqueue_now in zip(tasks, admitted, strict=True):
        by_shard[shard_of(task.task_id)].append((task, enqueue_now))
    jobs = []
    for shard, group in by_shard.items():
        with rq_connection(connection, shard).pipeline() as pipe:
            pipe.multi()  # RQ would start the MULTI itself, and refuses once a command is queued
            for (task_id, priority, user_id, trace), enqueue_now in group:
                if enqueue_now:
                    options = job_options(task_id, trace) | job_id_option(shard) | {"pipeline": pipe}
                    arguments = process_task_arguments(task_id, user_id)
                    job = shard_queue(connection, priority, shard).enqueue(PROCESS_TASK, *arguments, **options)
                    watch_job(pipe, task_id, job.id, now)
                    jobs.append(job)
                else:
                    pipe.zadd(watch_key(shard), {task_id: now})
                take_number(pipe, task_id, priority)
            pipe.execute()
    return jobs
