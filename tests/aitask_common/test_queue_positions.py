"""Queue positions on a real Redis: numbered in the create's MULTI (the task service's own enqueue), counted
out when the dispatcher first picks a task up, read in one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from aitask.v1 import task_service_pb2 as pb
from aitask_common.queues import leave_queue, queue_position, started_key, task_number_key
from devstack.stack import LoneRedis
from task_service.enqueue import NewTask, enqueue_tasks
from task_service.queue_position import QueuePositions

DB = 11


@pytest.fixture
def redis(redis_server: LoneRedis) -> Iterator[Redis]:
    client = Redis(port=redis_server.port, db=DB)
    client.flushdb()
    yield client
    client.flushdb()


def positions(redis_server: LoneRedis, task_ids: list[str], priority: str = "low") -> list[int | None]:
    async def read() -> list[int | None]:
        client = AsyncRedis(port=redis_server.port, db=DB)
        try:
            tasks = [
                pb.Task(task_id=task_id, status="pending", parameters=pb.TaskParameters(priority=priority))
                for task_id in task_ids
            ]
            for task in tasks:
                await QueuePositions(client).fill_in(task)
            return [task.queue_position if task.HasField("queue_position") else None for task in tasks]
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_positions_count_down_as_the_dispatcher_picks_tasks_up(redis: Redis, redis_server: LoneRedis) -> None:
    low = [f"low-{n}" for n in range(5)]
    enqueue_tasks(redis, [NewTask(task_id, "low") for task_id in low[:2]])
    enqueue_tasks(redis, [NewTask("critical-0", "critical"), *[NewTask(task_id, "low") for task_id in low[2:]]])
    assert positions(redis_server, low) == [0, 1, 2, 3, 4]
    # Priorities count apart.
    assert positions(redis_server, ["critical-0"], "critical") == [0]

    leave_queue(redis, "low-0")
    leave_queue(redis, "low-1")
    assert positions(redis_server, low) == [None, None, 0, 1, 2]
    # A second pick-up of the same task (a retry's job, a duplicate delivery) counts nothing.
    leave_queue(redis, "low-1")
    assert positions(redis_server, low[2:]) == [0, 1, 2]
    assert int(redis.get(started_key("low", 0)) or 0) == 2


def test_a_task_that_is_not_pending_or_not_numbered_has_no_position(redis: Redis, redis_server: LoneRedis) -> None:
    enqueue_tasks(redis, [NewTask("t-1", "default")])
    assert positions(redis_server, ["t-1"], "") == [0]  # no priority stored: the default queue
    assert positions(redis_server, ["never-enqueued"]) == [None]

    async def processing() -> bool:
        client = AsyncRedis(port=redis_server.port, db=DB)
        task = pb.Task(task_id="t-1", status="processing")
        await QueuePositions(client).fill_in(task)
        await client.aclose()
        return task.HasField("queue_position")

    assert not asyncio.run(processing())


def test_a_lost_count_clamps_at_the_front(redis: Redis) -> None:
    assert queue_position(None, None) is None
    assert queue_position(b"low 3", None) == 2
    # A Redis that lost the started counter but kept the number, or more started than numbered: the front.
    assert queue_position("low 3", b"10") == 0
    assert redis.get(task_number_key("x")) is None
