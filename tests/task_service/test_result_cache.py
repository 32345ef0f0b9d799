"""The final-result cache against a lone Redis (its own Redis db: no service sees these keys)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from google.protobuf.message import DecodeError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from aitask.v1 import task_service_pb2 as pb
from devstack.processes import free_port
from devstack.stack import LoneRedis
from task_service.result_cache import TOMBSTONE, FinalResultCache, Lookup, result_key

REDIS_DB = 2  # the services use db 0, the batching tests db 1
TTL = 60

T = TypeVar("T")


def run(redis_server: LoneRedis, scenario: Callable[[FinalResultCache], Awaitable[T]], **options: int) -> T:
    """Run `scenario` with a cache on the lone Redis (TTL 60 s, 64 KiB unless `options` say otherwise)."""

    async def main() -> T:
        redis = AsyncRedis(port=redis_server.port, db=REDIS_DB)
        try:
            settings = {"ttl_seconds": TTL, "max_bytes": 65536} | options
            return await scenario(FinalResultCache(redis, **settings))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def stored(redis_server: LoneRedis, task_id: str) -> bytes | None:
    return Redis(port=redis_server.port, db=REDIS_DB).get(result_key(task_id))  # type: ignore[return-value]


def completed_task(**fields: str) -> pb.Task:
    return pb.Task(task_id=uuid.uuid4().hex, type="text", status="completed", user_id="user-1", **fields)


def test_the_tombstone_is_never_a_valid_task() -> None:
    with pytest.raises(DecodeError):
        pb.Task.FromString(TOMBSTONE)


def test_a_put_task_reads_back_equal_and_expires(redis_server: LoneRedis) -> None:
    task = completed_task(text_result="hello")
    assert run(redis_server, lambda cache: cache.put(task)) is None
    assert run(redis_server, lambda cache: cache.get(task.task_id)) == task
    assert 0 < Redis(port=redis_server.port, db=REDIS_DB).ttl(result_key(task.task_id)) <= TTL
    assert run(redis_server, lambda cache: cache.get(uuid.uuid4().hex)) is Lookup.MISS


def test_results_larger_than_max_bytes_are_not_cached(redis_server: LoneRedis) -> None:
    fits, too_large = completed_task(text_result="x" * 200), completed_task(text_result="x" * 201)
    limit = fits.ByteSize()
    assert too_large.ByteSize() == limit + 1
    for task in (fits, too_large):
        run(redis_server, lambda cache, task=task: cache.put(task), max_bytes=limit)
    assert stored(redis_server, fits.task_id) == fits.SerializeToString()
    assert stored(redis_server, too_large.task_id) is None


def test_a_tombstone_replaces_an_entry_and_is_never_replaced_by_a_put(redis_server: LoneRedis) -> None:
    task = completed_task()

    async def scenario(cache: FinalResultCache) -> tuple[pb.Task | Lookup, pb.Task | Lookup]:
        await cache.put(task)
        await cache.mark_deleted(task.task_id)
        after_delete = await cache.get(task.task_id)
        await cache.put(task)  # a read that found the task in MongoDB before the delete
        return after_delete, await cache.get(task.task_id)

    assert run(redis_server, scenario) == (Lookup.DELETED, Lookup.DELETED)
    assert stored(redis_server, task.task_id) == TOMBSTONE


def test_forget_drops_an_entry(redis_server: LoneRedis) -> None:
    task = completed_task()

    async def scenario(cache: FinalResultCache) -> pb.Task | Lookup:
        await cache.put(task)
        await cache.forget(task.task_id)
        return await cache.get(task.task_id)

    assert run(redis_server, scenario) is Lookup.MISS


def test_zero_seconds_turns_the_cache_off(redis_server: LoneRedis) -> None:
    task = completed_task()
    Redis(port=redis_server.port, db=REDIS_DB).set(result_key(task.task_id), task.SerializeToString())

    async def scenario(cache: FinalResultCache) -> pb.Task | Lookup:
        other = completed_task()
        await cache.put(other)
        await cache.mark_deleted(other.task_id)
        assert stored(redis_server, other.task_id) is None
        return await cache.get(task.task_id)

    assert run(redis_server, scenario, ttl_seconds=0) is Lookup.MISS


def test_redis_down_reads_miss_and_writes_are_skipped_but_forget_raises() -> None:
    async def scenario() -> None:
        # No retries: redis-py's default backs off for seconds on every call to a dead port.
        redis = AsyncRedis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        cache = FinalResultCache(redis, TTL, 65536)
        task = completed_task()
        try:
            assert await cache.get(task.task_id) is Lookup.MISS
            await cache.put(task)
            await cache.mark_deleted(task.task_id)
            with pytest.raises(RedisError):
                await cache.forget(task.task_id)
        finally:
            await redis.aclose()

    asyncio.run(scenario())
