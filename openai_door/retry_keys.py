"""Idempotency keys for requests that bring none, so the SDKs' own retries never make a second task.

The official SDKs retry a request that timed out or got a 408, 409, 429 or 5xx (twice by default) with the same
body, counting in `x-stainless-retry-count`, and send no `Idempotency-Key` of their own. A first attempt
(count 0) gets a fresh key, remembered in Redis under a digest of the caller's key, path and body; a retry
(count above 0) of the same request finds it and reaches the first attempt's task. A deliberate repeat of the
same request is a new first attempt, so it makes a new task, as it should.
"""

from __future__ import annotations

import hashlib
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from aitask_common.logging import get_logger

log = get_logger(__name__)

KEY_PREFIX = "aitask:openai-door:attempt:"


class RetryKeys:
    """Makes and finds the key of one SDK request across its attempts."""

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds

    async def key_for(self, authorization: str, path: str, body: bytes, retry_count: str | None) -> str | None:
        """The idempotency key of this attempt; None when Redis cannot remember it (the create then has no key)."""
        digest = hashlib.sha256(b"\0".join([authorization.encode(), path.encode(), body])).hexdigest()
        name = KEY_PREFIX + digest
        try:
            if _is_retry(retry_count):
                earlier = await self.redis.get(name)
                if earlier is not None:
                    return earlier.decode() if isinstance(earlier, bytes) else str(earlier)
            key = f"openai-door-{uuid.uuid4().hex}"
            await self.redis.set(name, key, ex=self.ttl_seconds)
            return key
        except RedisError as error:
            log.warning("retry key unavailable: an SDK retry of this request may make a second task", error=str(error))
            return None


def _is_retry(retry_count: str | None) -> bool:
    try:
        return int(retry_count or "0") > 0
    except ValueError:
        return False
