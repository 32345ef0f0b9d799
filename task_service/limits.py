"""Abuse limits kept in Redis: a per-key request rate and a per-user cap on tasks in flight (reserved in the same
step as the create's credit).

Both are one Lua script each, so the check and the write are atomic however
many task-service replicas share the Redis.
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from aitask_common.credit_holds import credit_key
from aitask_common.ledger import InsufficientCredit
from aitask_common.tasks import INFLIGHT_USERS_KEY, inflight_key
from task_service.batching import Batcher

# Fixed window that opens at a key's first request. The TTL is re-set when missing, so a counter can
# never outlive its window (which would lock a key out for good).
_COUNT_REQUEST = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] the user's in-flight set, KEYS[2] their credit hash (aitask_common/credit_holds.py); ARGV task id, cap
# (0 = none), cost (0 = free), now (ms). Adds the task id while the user is under the cap and, for a priced task,
# holds its cost while the credits available cover it: both or neither, so a refused create writes nothing.
# A task id already in the set is a yes, so a pipeline re-sent after a broken connection changes nothing.
# Returns {1, 0} reserved, {0, 0} at the cap, {-2, available} short of credit, {-1, 0} no credit hash yet.
_RESERVE_SLOT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return {1, 0}
end
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('SCARD', KEYS[1]) >= cap then
  return {0, 0}
end
local cost = tonumber(ARGV[3])
if cost > 0 then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    return {-1, 0}
  end
  local available = tonumber(redis.call('HGET', KEYS[2], 'balance')) - tonumber(redis.call('HGET', KEYS[2], 'held'))
  if available < cost then
    return {-2, available}
  end
  redis.call('HINCRBY', KEYS[2], 'held', cost)
  redis.call('HSET', KEYS[2], 'hold:' .. ARGV[1], ARGV[3] .. ':' .. ARGV[4])
end
redis.call('SADD', KEYS[1], ARGV[1])
return {1, 0}
"""


def _outcome(slot: tuple[str, str, int], reply: list[int]) -> Exception | None:
    code, available = int(reply[0]), int(reply[1])
    if code == 1:
        return None
    if code == 0:
        return AtCap()
    if code == -2:
        return InsufficientCredit(slot[0], slot[2], available)
    return CreditsUnknown()


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
        return max(1, math.ceil(int(ttl_ms) / 1000))


# Most slots one pipeline reserves.
RESERVE_BATCH_MAX = 256


class AtCap(Exception):
    """A reservation's outcome in its batch: the user already has the most tasks in flight."""


class CreditsUnknown(Exception):
    """A reservation's outcome in its batch: the user has no credit hash in Redis yet (rebuild it, then retry)."""


class InflightTasks:
    """The set of each user's non-final task ids, capped per user.

    The task service adds on create and removes on delete; the dispatcher removes a task when it
    reaches a final state, and its reconciler prunes members whose task is final or gone.
    """

    def __init__(self, redis: Redis, cap: int) -> None:
        self.redis = redis
        self.cap = cap
        # Started and stopped with the server (task_service.server).
        self.reserves = Batcher("reserve", self._reserve_many, RESERVE_BATCH_MAX)

    async def reserve(self, user_id: str, task_id: str, cost: int = 0) -> None:
        """Count `task_id` as in flight for `user_id` and hold its `cost` in credits, or write nothing: AtCap when
        the user is at the cap, InsufficientCredit when short, CreditsUnknown when their credit hash is missing."""
        await self.reserves.submit((user_id, task_id, cost))

    async def _reserve_many(self, slots: list[tuple[str, str, int]]) -> list[Exception | None]:
        """One round trip for concurrent creates; each script runs atomically on its own, in order. The users go to
        the reconciler's index after their scripts, so an index entry dropped for an empty set in between is re-added.

        EVAL, not EVALSHA: a pipeline of registered scripts first asks SCRIPT EXISTS, a second round trip.
        """
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, task_id, cost in slots:
                pipe.eval(_RESERVE_SLOT, 2, inflight_key(user_id), credit_key(user_id), task_id, self.cap, cost, now_ms)
            pipe.sadd(INFLIGHT_USERS_KEY, *{user_id for user_id, _, _ in slots})
            replies = (await pipe.execute())[:-1]
        return [_outcome(slot, reply) for slot, reply in zip(slots, replies, strict=True)]

    async def release(self, user_id: str, task_id: str) -> None:
        """Stop counting `task_id` (a withdrawn create or a deleted task)."""
        await self.redis.srem(inflight_key(user_id), task_id)
