"""The asyncio Redis client of every service.

redis-py's asyncio connections made from a URL are not retried: after a Redis restart, each pooled connection
fails its next command once ("Connection closed by server") before it reconnects. A broken connection is retried
(it reconnects at once); a timeout is not, so a hung Redis costs a call one socket timeout, as everywhere else.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

RECONNECT_RETRIES = 2


def reconnecting() -> Retry:
    """Retry a command whose connection broke, after reconnecting."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), RECONNECT_RETRIES, supported_errors=(RedisConnectionError,))


def async_redis(url: str, socket_timeout: float, **options: Any) -> Redis:
    """A client whose pooled connections survive a Redis restart."""
    return Redis.from_url(url, socket_timeout=socket_timeout, retry=reconnecting(), **options)
