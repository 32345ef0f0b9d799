"""Where a pending task stands in its queue (aitask_common.queues says how it is counted)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from aitask.v1 import task_service_pb2 as pb
from aitask_common.logging import get_logger
from aitask_common.queues import Priority, queue_position, shard_of, started_key, task_number_key
from aitask_common.tasks import TaskStatus

log = get_logger(__name__)


class QueuePositions:
    """Reads pending tasks' queue positions: one Redis round trip per read, whatever the queue's length."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def fill_in(self, task: pb.Task) -> None:
        """Set `task.queue_position` if it is pending and numbered; best effort (a Redis error leaves it unset)."""
        if task.status != TaskStatus.PENDING:
            return
        priority = task.parameters.priority or Priority.DEFAULT
        try:
            counter = started_key(priority, shard_of(task.task_id))
            entry, started = await self.redis.mget(task_number_key(task.task_id), counter)
        except RedisError as error:
            log.warning("queue position unknown", task_id=task.task_id, error=str(error))
            return
        position = queue_position(entry, started)
        if position is not None:
            task.queue_position = position
