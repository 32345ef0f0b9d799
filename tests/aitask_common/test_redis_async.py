"""The shared asyncio Redis client on a real Redis that restarts under it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from aitask_common.redis_async import async_redis
from devstack.stack import LoneRedis

CONNECTIONS = 4


async def fill_pool(client: Redis) -> None:
    """Leave several connections idle in the pool, as a busy service does."""
    await asyncio.gather(*(client.set(f"key-{n}", n) for n in range(CONNECTIONS)))


def test_the_first_command_after_a_restart_succeeds(tmp_path: Path) -> None:
    async def scenario(server: LoneRedis) -> None:
        client = async_redis(server.url, socket_timeout=2)
        plain = Redis.from_url(server.url, socket_timeout=2)
        await fill_pool(client)
        await fill_pool(plain)
        server.__exit__()
        server.__enter__()
        # redis-py's own URL client fails once per dead pooled connection: the case this client exists for.
        with pytest.raises(RedisConnectionError):
            await plain.set("after", "restart")
        assert await client.set("after", "restart")
        assert await client.get("after") == b"restart"
        await asyncio.gather(client.aclose(), plain.aclose())

    with LoneRedis(tmp_path) as server:
        asyncio.run(scenario(server))
