"""Enqueueing created tasks' jobs: concurrent creates share one Redis round trip."""

from __future__ import annotations

import asyncio

from redis import Redis

from aitask_common.queues import Priority, enqueue_tasks
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
