"""The create path's batchers against the test stack's FerretDB and Redis (own database, own Redis db: no service
sees these tasks or jobs)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, ServerSelectionTimeoutError
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from aitask_common.queues import QUEUE_ORDER, WATCH_KEY
from aitask_common.rq_shards import shard_queue
from devstack.processes import free_port
from devstack.stack import LocalStack, LoneRedis
from task_service.batching import Batcher
from task_service.enqueue import TaskQueue
from task_service.storage import IDEMPOTENCY_FIELD, TaskStore

DATABASE = "aitask_batching_test"
REDIS_DB = 1  # the services use db 0


@asynccontextmanager
async def running(batcher: Batcher) -> AsyncIterator[list[int]]:
    """Start `batcher` for the block; yields the size of each batch it sends (the real runner still runs)."""
    sizes: list[int] = []
    run = batcher.run

    async def recording(items: list[Any]) -> Any:
        sizes.append(len(items))
        return await run(items)

    batcher.run = recording
    batcher.start()
    try:
        yield sizes
    finally:
        await batcher.stop()


async def concurrently(calls: list[Callable[[], Awaitable[None]]]) -> list[BaseException | None]:
    """Run the calls at once (all queued before the batcher's next turn); each call's exception or None."""
    return await asyncio.wait_for(asyncio.gather(*(call() for call in calls), return_exceptions=True), timeout=30)


def task(key: str | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"_id": uuid.uuid4().hex, "user_id": "u", "status": "pending"}
    if key is not None:
        document[IDEMPOTENCY_FIELD] = key
    return document


def test_concurrent_inserts_share_one_insert_many_and_a_duplicate_fails_alone(stack: LocalStack) -> None:
    async def scenario() -> None:
        client: AsyncMongoClient = AsyncMongoClient(stack.env["MONGO_URL"])
        store = TaskStore(client, DATABASE)
        await store.collection.drop()
        await store.ensure_indexes()
        async with running(store.inserts) as sizes:
            taken = task("u:taken")
            await store.insert(taken)
            good = [task() for _ in range(40)]
            clash = task("u:taken")
            twins = [task("u:twin"), task("u:twin")]
            batch = [*good[:20], clash, twins[0], *good[20:], twins[1]]
            outcomes = await concurrently([lambda document=document: store.insert(document) for document in batch])
            stored = {document["_id"] for document in await store.collection.find().to_list()}
        await client.close()

        assert sizes == [1, len(batch)]  # a lone insert goes alone; concurrent ones share one insert_many
        failed = {document["_id"]: outcome for document, outcome in zip(batch, outcomes, strict=True) if outcome}
        assert set(failed) - {twin["_id"] for twin in twins} == {clash["_id"]}
        assert len(failed) == 2  # one twin won the key, the other lost it
        assert all(type(error) is DuplicateKeyError and error.code == 11000 for error in failed.values())
        assert "duplicate key" in str(failed[clash["_id"]])
        assert stored == {taken["_id"], *(document["_id"] for document in batch)} - set(failed)

    asyncio.run(scenario())


def test_a_failed_batch_fails_each_of_its_callers_and_the_batcher_keeps_serving() -> None:
    async def scenario() -> None:
        nowhere: AsyncMongoClient = AsyncMongoClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=300)
        store = TaskStore(nowhere, DATABASE)
        async with running(store.inserts) as sizes:
            first = await concurrently([lambda: store.insert(task()) for _ in range(5)])
            second = await concurrently([lambda: store.insert(task())])
        await nowhere.close()

        assert sizes == [5, 1]
        assert all(isinstance(error, ServerSelectionTimeoutError) for error in [*first, *second])

    asyncio.run(scenario())


def test_concurrent_enqueues_share_one_pipeline(redis_server: LoneRedis) -> None:
    redis = Redis(port=redis_server.port, db=REDIS_DB)
    redis.flushdb()
    tasks = [(uuid.uuid4().hex, QUEUE_ORDER[n % len(QUEUE_ORDER)]) for n in range(60)]
    task_queue = TaskQueue(redis)

    async def scenario() -> list[int]:
        async with running(task_queue.batcher) as sizes:
            await task_queue.enqueue("lone", "default")
            outcomes = await concurrently([lambda t=t: task_queue.enqueue(*t) for t in tasks])
        assert outcomes == [None] * len(tasks)
        return sizes

    try:
        assert asyncio.run(scenario()) == [1, len(tasks)]
        for priority in QUEUE_ORDER:
            jobs = Job.fetch_many(
                shard_queue(redis, priority, 0).get_job_ids(), connection=redis, serializer=JSONSerializer
            )
            expected = [task_id for task_id, queued_at in tasks if queued_at == priority]
            if priority == "default":
                expected.insert(0, "lone")
            assert [job.args[0] for job in jobs if job is not None] == expected
        assert {member.decode() for member in redis.zrange(WATCH_KEY, 0, -1)} == {"lone", *(t for t, _ in tasks)}
    finally:
        redis.flushdb()


def test_a_failed_pipeline_fails_each_task_of_its_batch() -> None:
    # No retries: redis-py's default backs off for seconds on every call to a dead port.
    task_queue = TaskQueue(Redis(port=free_port(), socket_timeout=1, retry=Retry(NoBackoff(), 0)))

    async def scenario() -> list[BaseException | None]:
        async with running(task_queue.batcher) as sizes:
            outcomes = await concurrently([lambda n=n: task_queue.enqueue(f"t{n}", "low") for n in range(4)])
            outcomes += await concurrently([lambda: task_queue.enqueue("later", "low")])
        assert sizes == [4, 1]
        return outcomes

    assert all(isinstance(error, RedisConnectionError) for error in asyncio.run(scenario()))


def test_submit_refuses_when_the_batcher_is_not_running() -> None:
    async def nothing(items: list[int]) -> None:
        return None

    batcher: Batcher[int] = Batcher("test", nothing)
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(batcher.submit(1))


def test_stop_cancels_the_batch_in_flight_and_the_callers_still_waiting() -> None:
    async def scenario() -> list[BaseException | None]:
        started = asyncio.Event()

        async def never_done(items: list[int]) -> None:
            started.set()
            await asyncio.Event().wait()

        batcher: Batcher[int] = Batcher("test", never_done)
        batcher.start()
        in_flight = asyncio.create_task(batcher.submit(1))
        await started.wait()
        waiting = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0)  # queued behind the batch in flight
        await batcher.stop()
        return await asyncio.wait_for(asyncio.gather(in_flight, waiting, return_exceptions=True), timeout=5)

    assert [type(outcome) for outcome in asyncio.run(scenario())] == [asyncio.CancelledError] * 2
