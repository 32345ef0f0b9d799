"""The per-user cap on tasks in flight against a lone Redis (its own Redis db: no service sees these keys)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from aitask_common.tasks import inflight_key
from devstack.stack import LoneRedis
from task_service.limits import InflightTasks

REDIS_DB = 3  # the services use db 0, the batching tests db 1, the result-cache tests db 2
CAP = 5

T = TypeVar("T")


def run(redis_server: LoneRedis, scenario: Callable[[InflightTasks], Awaitable[T]]) -> T:
    """Run `scenario` with a running InflightTasks (cap 5) on the lone Redis."""

    async def main() -> T:
        redis = AsyncRedis(port=redis_server.port, db=REDIS_DB)
        inflight = InflightTasks(redis, CAP)
        inflight.reserves.start()
        try:
            return await scenario(inflight)
        finally:
            await inflight.reserves.stop()
            await redis.aclose()

    return asyncio.run(main())


def members(redis_server: LoneRedis, user_id: str) -> set[bytes]:
    return Redis(port=redis_server.port, db=REDIS_DB).smembers(inflight_key(user_id))  # type: ignore[return-value]


def test_concurrent_reservations_share_a_round_trip_and_stop_at_the_cap(redis_server: LoneRedis) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    wanted = [(alice, f"a{n}") for n in range(8)] + [(bob, f"b{n}") for n in range(3)]

    async def scenario(inflight: InflightTasks) -> list[bool]:
        return await asyncio.gather(*(inflight.reserve(user, task) for user, task in wanted))

    granted = run(redis_server, scenario)
    # In order within the batch: alice's first five get a slot, her last three do not; bob is not affected.
    assert granted == [True] * CAP + [False] * 3 + [True] * 3
    assert members(redis_server, alice) == {f"a{n}".encode() for n in range(CAP)}
    assert members(redis_server, bob) == {b"b0", b"b1", b"b2"}


def test_a_reservation_sent_twice_keeps_its_slot(redis_server: LoneRedis) -> None:
    """What a pipeline re-sent after a broken connection does: the second run of a granted slot says yes again."""
    user = f"carol-{uuid.uuid4().hex}"

    async def scenario(inflight: InflightTasks) -> list[bool]:
        first = [await inflight.reserve(user, f"c{n}") for n in range(CAP)]
        return first + [await inflight.reserve(user, f"c{CAP - 1}"), await inflight.reserve(user, "one more")]

    assert run(redis_server, scenario) == [True] * CAP + [True, False]
    assert len(members(redis_server, user)) == CAP


def test_no_cap_grants_every_reservation(redis_server: LoneRedis) -> None:
    user = f"dave-{uuid.uuid4().hex}"

    async def scenario(inflight: InflightTasks) -> list[bool]:
        inflight.cap = 0
        return await asyncio.gather(*(inflight.reserve(user, f"d{n}") for n in range(CAP * 2)))

    assert run(redis_server, scenario) == [True] * (CAP * 2)
    assert len(members(redis_server, user)) == CAP * 2
