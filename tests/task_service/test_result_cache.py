"""The final-result cache against the test stack's Redis (its own Redis db: no service sees these keys)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from google.protobuf.message import DecodeError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from aitask.v1 import task_service_pb2 as pb
from devstack.processes import free_port
from task_service.result_cache import TOMBSTONE, FinalResultCache, Lookup, result_key
from tests.stack import LocalStack

REDIS_DB = 2  # the services use db 0, the batching tests db 1
TTL = 60

T = TypeVar("T")


def run(stack: LocalStack, scenario: Callable[[FinalResultCache], Awaitable[T]], **options: int) -> T:
    """Run `scenario` with a cache on the stack's Redis (TTL 60 s, 64 KiB unless `options` say otherwise)."""

    async def main() -> T:
        redis = AsyncRedis(port=stack.ports.redis, db=REDIS_DB)
        try:
            settings = {"ttl_seconds": TTL, "max_bytes": 65536} | options
            return await scenario(FinalResultCache(redis, **settings))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def stored(stack: LocalStack, task_id: str) -> bytes | None:
    return Redis(port=stack.ports.redis, db=REDIS_DB).get(result_key(task_id))  # type: ignore[return-value]


def completed_task(**fields: str) -> pb.Task:
    return pb.Task(task_id=uuid.uuid4().hex, type="text", status="completed", user_id="user-1", **fields)


def test_the_tombstone_is_never_a_valid_task() -> None:
    with pytest.raises(DecodeError):
        pb.Task.FromString(TOMBSTONE)


def test_a_put_task_reads_back_equal_and_expires(stack: LocalStack) -> None:
    task = completed_task(text_result="hello")
    assert run(stack, lambda cache: cache.put(task)) is None
    assert run(stack, lambda cache: cache.get(task.task_id)) == task
    assert 0 < Redis(port=stack.ports.redis, db=REDIS_DB).ttl(result_key(task.task_id)) <= TTL
    assert run(stack, lambda cache: cache.get(uuid.uuid4().hex)) is Lookup.MISS


def test_results_larger_than_max_bytes_are_not_cached(stack: LocalStack) -> None:
    fits, too_large = completed_task(text_result="x" * 200), completed_task(text_result="x" * 201)
    limit = fits.ByteSize()
    assert too_large.ByteSize() == limit + 1
    for task in (fits, too_large):
        run(stack, lambda cache, task=task: cache.put(task), max_bytes=limit)
    assert stored(stack, fits.task_id) == fits.SerializeToString()
    assert stored(stack, too_large.task_id) is None


def test_a_tombstone_replaces_an_entry_and_is_never_replaced_by_a_put(stack: LocalStack) -> None:
    task = completed_task()

    async def scenario(cache: FinalResultCache) -> tuple[pb.Task | Lookup, pb.Task | Lookup]:
        await cache.put(task)
        await cache.mark_deleted(task.task_id)
        after_delete = await cache.get(task.task_id)
        await cache.put(task)  # a read that found the task in MongoDB before the delete
        return after_delete, await cache.get(task.task_id)

    assert run(stack, scenario) == (Lookup.DELETED, Lookup.DELETED)
    assert stored(stack, task.task_id) == TOMBSTONE


def test_forget_drops_an_entry(stack: LocalStack) -> None:
    task = completed_task()

    async def scenario(cache: FinalResultCache) -> pb.Task | Lookup:
        await cache.put(task)
        await cache.forget(task.task_id)
        return await cache.get(task.task_id)

    assert run(stack, scenario) is Lookup.MISS


def test_zero_seconds_turns_the_cache_off(stack: LocalStack) -> None:
    task = completed_task()
    Redis(port=stack.ports.redis, db=REDIS_DB).set(result_key(task.task_id), task.SerializeToString())

    async def scenario(cache: FinalResultCache) -> pb.Task | Lookup:
        other = completed_task()
        await cache.put(other)
        await cache.mark_deleted(other.task_id)
        assert stored(stack, other.task_id) is None
        return await cache.get(task.task_id)

    assert run(stack, scenario, ttl_seconds=0) is Lookup.MISS


def test_redis_down_reads_miss_and_writes_are_skipped_but_forget_raises() -> None:
    async def scenario() -> None:
        redis = AsyncRedis(port=free_port(), socket_connect_timeout=1)
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
