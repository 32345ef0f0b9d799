"""The per-user cap on tasks in flight and the credit held with it, against a lone Redis (its own Redis db: no
service sees these keys)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from aitask_common.credit_holds import credit_key
from aitask_common.ledger import InsufficientCredit
from aitask_common.tasks import INFLIGHT_USERS_KEY, inflight_key
from devstack.stack import LoneRedis
from task_service.limits import AtCap, CreditsUnknown, InflightTasks

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


async def outcome(inflight: InflightTasks, user_id: str, task_id: str, cost: int = 0) -> bool | str:
    """True when reserved; else what refused it: "cap", "credit" (short) or "unknown" (no credit hash)."""
    try:
        await inflight.reserve(user_id, task_id, cost)
    except AtCap:
        return "cap"
    except InsufficientCredit:
        return "credit"
    except CreditsUnknown:
        return "unknown"
    return True


def members(redis_server: LoneRedis, user_id: str) -> set[bytes]:
    return Redis(port=redis_server.port, db=REDIS_DB).smembers(inflight_key(user_id))  # type: ignore[return-value]


def test_concurrent_reservations_share_a_round_trip_and_stop_at_the_cap(redis_server: LoneRedis) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    wanted = [(alice, f"a{n}") for n in range(8)] + [(bob, f"b{n}") for n in range(3)]

    async def scenario(inflight: InflightTasks) -> list[bool]:
        return await asyncio.gather(*(outcome(inflight, user, task) for user, task in wanted))

    granted = run(redis_server, scenario)
    # In order within the batch: alice's first five get a slot, her last three do not; bob is not affected.
    assert granted == [True] * CAP + ["cap"] * 3 + [True] * 3
    assert members(redis_server, alice) == {f"a{n}".encode() for n in range(CAP)}
    assert members(redis_server, bob) == {b"b0", b"b1", b"b2"}
    # Both are in the index the reconciler prunes from (dispatcher_service/reconciler.py).
    index = Redis(port=redis_server.port, db=REDIS_DB).smembers(INFLIGHT_USERS_KEY)
    assert {alice.encode(), bob.encode()} <= index


def test_a_reservation_sent_twice_keeps_its_slot(redis_server: LoneRedis) -> None:
    """What a pipeline re-sent after a broken connection does: the second run of a granted slot says yes again."""
    user = f"carol-{uuid.uuid4().hex}"

    async def scenario(inflight: InflightTasks) -> list[bool | str]:
        first = [await outcome(inflight, user, f"c{n}") for n in range(CAP)]
        return first + [await outcome(inflight, user, f"c{CAP - 1}"), await outcome(inflight, user, "one more")]

    assert run(redis_server, scenario) == [True] * CAP + [True, "cap"]
    assert len(members(redis_server, user)) == CAP


def test_no_cap_grants_every_reservation(redis_server: LoneRedis) -> None:
    user = f"dave-{uuid.uuid4().hex}"

    async def scenario(inflight: InflightTasks) -> list[bool | str]:
        inflight.cap = 0
        return await asyncio.gather(*(outcome(inflight, user, f"d{n}") for n in range(CAP * 2)))

    assert run(redis_server, scenario) == [True] * (CAP * 2)
    assert len(members(redis_server, user)) == CAP * 2


def test_concurrent_creates_hold_no_more_credit_than_is_available(redis_server: LoneRedis) -> None:
    user = f"erin-{uuid.uuid4().hex}"
    Redis(port=redis_server.port, db=REDIS_DB).hset(credit_key(user), mapping={"seq": 1, "balance": 10, "held": 0})

    async def scenario(inflight: InflightTasks) -> list[bool | str]:
        inflight.cap = 0
        creates = [outcome(inflight, user, f"e{n}", cost=3) for n in range(5)]
        return [*await asyncio.gather(*creates), await outcome(inflight, user, "e0", cost=3)]

    # 3 + 3 + 3 fit in 10; the fourth and fifth are refused and write nothing; a retried reservation holds once.
    assert run(redis_server, scenario) == [True, True, True, "credit", "credit", True]
    credits = Redis(port=redis_server.port, db=REDIS_DB).hgetall(credit_key(user))
    assert credits[b"held"] == b"9" and sorted(key for key in credits if key.startswith(b"hold:")) == [
        b"hold:e0",
        b"hold:e1",
        b"hold:e2",
    ]
    assert members(redis_server, user) == {b"e0", b"e1", b"e2"}


def test_a_priced_create_without_a_credit_hash_writes_nothing(redis_server: LoneRedis) -> None:
    user = f"fay-{uuid.uuid4().hex}"

    async def scenario(inflight: InflightTasks) -> list[bool | str]:
        return [await outcome(inflight, user, "f0", cost=3), await outcome(inflight, user, "f1")]

    assert run(redis_server, scenario) == ["unknown", True]
    assert members(redis_server, user) == {b"f1"}
    assert not Redis(port=redis_server.port, db=REDIS_DB).exists(credit_key(user))
