"""Abuse limits kept in Redis: a per-key request rate and a per-user cap on tasks in flight.

Both are one Lua script each, so the check and the write are atomic however
many task-service replicas share the Redis.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from aitask_common.tasks import inflight_key

# Fixed window that opens at a key's first request. The TTL is re-set when missing, so a counter can
# never outlive its window (which would lock a key out for good).
_COUNT_REQUEST = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
"""

# Adds the task id only while the user is under the cap (0 = no cap): a refused create writes nothing.
_RESERVE_SLOT = """
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('SCARD', KEYS[1]) >= cap then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""


def rate_limit_key(key_id: str) -> str:
    """Redis key counting one API key's requests in the current window."""
    return f"aitask:ratelimit:{key_id}"


class RateLimiter:
    """Counts each API key's requests per fixed window."""

    def __init__(self, redis: Redis, default_limit: int, window_seconds: int) -> None:
        self.default_limit = default_limit
        self.window_ms = window_seconds * 1000
        self._count = redis.register_script(_COUNT_REQUEST)

    async def retry_after(self, key_id: str, limit: int | None) -> int | None:
        """Count one request of `key_id`; whole seconds until its window reopens when over `limit`, else None.

        `limit` None means the default; 0 (or no key id: authentication off) means unlimited.
        """
        limit = self.default_limit if limit is None else limit
        if limit == 0 or not key_id:
            return None
        count, ttl_ms = await self._count(keys=[rate_limit_key(key_id)], args=[self.window_ms])
        if count <= limit:
            return None
        return max(1, math.ceil(ttl_ms / 1000))


class InflightTasks:
    """The set of each user's non-final task ids, capped per user.

    The task service adds on create and removes on delete; the dispatcher removes a task when it
    reaches a final state, and its reconciler prunes members whose task is final or gone.
    """

    def __init__(self, redis: Redis, cap: int) -> None:
        self.redis = redis
        self.cap = cap
        self._reserve = redis.register_script(_RESERVE_SLOT)

    async def reserve(self, user_id: str, task_id: str) -> bool:
        """Count `task_id` as in flight for `user_id`; False (and nothing written) when the user is at the cap."""
        return bool(await self._reserve(keys=[inflight_key(user_id)], args=[task_id, self.cap]))

    async def release(self, user_id: str, task_id: str) -> None:
        """Stop counting `task_id` (a withdrawn create or a deleted task)."""
        await self.redis.srem(inflight_key(user_id), task_id)
