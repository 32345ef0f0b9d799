"""Final task results kept in Redis, so reads of finished tasks skip MongoDB.

A task in a final state (completed, failed, cancelled) never changes again; it
can only be deleted. So its public `Task` message (which carries the owner's
user_id) is cached under `aitask:result:<task_id>` for a while, and a delete
leaves a tombstone there, so that every replica answers not found afterwards.

Redis stays optional for reads: any Redis error is a miss, and the caller reads MongoDB.
"""

from __future__ import annotations

from enum import Enum

from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aitask.v1 import task_service_pb2 as pb
from aitask_common.logging import QuietWarnings, get_logger
from aitask_common.metrics import RESULT_CACHE_LOOKUPS

log = get_logger(__name__)

# Field number 0 is invalid in protobuf, so no serialized Task starts with this byte.
TOMBSTONE = b"\x00"
# At most one warning per this many seconds while Redis is failing.
WARNING_INTERVAL_SECONDS = 60.0


def result_key(task_id: str) -> str:
    """Redis key of a task's cached final result (or its tombstone)."""
    return f"aitask:result:{task_id}"


class Lookup(Enum):
    """A cache answer that is not a task."""

    MISS = "miss"
    DELETED = "deleted"


class FinalResultCache:
    """Final `Task` messages by task id; ttl_seconds 0 turns the cache off."""

    def __init__(self, redis: Redis, ttl_seconds: int, max_bytes: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._warn = QuietWarnings(log, WARNING_INTERVAL_SECONDS)

    @property
    def enabled(self) -> bool:
        """Whether the cache is used at all."""
        return self.ttl_seconds > 0

    async def get(self, task_id: str) -> pb.Task | Lookup:
        """The cached task, DELETED for a tombstone, MISS when absent, unreadable or Redis fails."""
        if not self.enabled:
            return Lookup.MISS
        try:
            value = await self.redis.get(result_key(task_id))
        except RedisError as error:
            self._warn("result cache read failed", error)
            RESULT_CACHE_LOOKUPS.labels("error").inc()
            return Lookup.MISS
        if value == TOMBSTONE:
            RESULT_CACHE_LOOKUPS.labels("deleted").inc()
            return Lookup.DELETED
        if isinstance(value, bytes):  # None when absent (the client does not decode responses)
            try:
                task = pb.Task.FromString(value)
            except DecodeError:
                log.warning("unreadable result cache entry ignored", task_id=task_id)
            else:
                RESULT_CACHE_LOOKUPS.labels("hit").inc()
                return task
        RESULT_CACHE_LOOKUPS.labels("miss").inc()
        return Lookup.MISS

    async def put(self, task: pb.Task) -> None:
        """Cache a final task unless it is too large, or a tombstone (or another copy) is already there."""
        if not self.enabled:
            return
        value = task.SerializeToString()
        if len(value) > self.max_bytes:
            return
        try:
            # NX: a tombstone written by a concurrent delete must win over this (possibly older) read.
            await self.redis.set(result_key(task.task_id), value, nx=True, ex=self.ttl_seconds)
        except RedisError as error:
            self._warn("result cache write failed", error)

    async def forget(self, task_id: str) -> None:
        """Drop a cached copy (before a delete); raises RedisError, as the delete must not go ahead then."""
        if self.enabled:
            await self.redis.delete(result_key(task_id))

    async def mark_deleted(self, task_id: str) -> None:
        """Leave a tombstone (after a delete), replacing any copy a concurrent read put back."""
        if not self.enabled:
            return
        try:
            await self.redis.set(result_key(task_id), TOMBSTONE, ex=self.ttl_seconds)
        except RedisError as error:
            log.warning("could not write result cache tombstone", task_id=task_id, error=str(error))
