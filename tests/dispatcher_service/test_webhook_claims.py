"""The webhook delivery loop's claim script (issue 17) against a real Redis: due ids come out oldest due first, at
most as many as asked, each leased (scored at the lease's end) in the same step, so a second claim does not take
them until the lease passes; a new message's first copy comes out with its id, once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from aitask_common.events import EventKind
from aitask_common.webhooks import DUE_KEY, FIRST_COPY_KEY, first_copy, from_first_copy, message_for
from devstack.stack import LoneRedis
from dispatcher_service.webhook_delivery import CLAIM_SCRIPT, drop_stray_copies

NOW = 1_800_000_000.0
LEASE = 30.0
# The stray-copy test uses the real key names, so a database of its own on the shared Redis.
STRAY_COPIES_DB = 12


@pytest.fixture
def keys(redis_server: LoneRedis) -> Iterator[tuple[Redis, str, str]]:
    redis = redis_server.redis()
    due, copies = f"test:webhooks:due:{uuid.uuid4().hex}", f"test:webhooks:copies:{uuid.uuid4().hex}"
    try:
        yield redis, due, copies
    finally:
        redis.delete(due, copies)


def test_due_ids_are_claimed_oldest_first_once_each_until_their_lease_passes(keys: tuple[Redis, str, str]) -> None:
    redis, due, copies = keys
    redis.zadd(due, {"late": NOW - 1, "early": NOW - 5, "middle": NOW - 3, "future": NOW + 60})
    claim = redis.register_script(CLAIM_SCRIPT)
    assert claim(keys=[due, copies], args=[NOW, 2, NOW + LEASE]) == [b"early", None, b"middle", None]
    assert claim(keys=[due, copies], args=[NOW, 10, NOW + LEASE]) == [b"late", None]
    assert claim(keys=[due, copies], args=[NOW + 1, 10, NOW + 1 + LEASE]) == []
    assert redis.zscore(due, "early") == NOW + LEASE and redis.zscore(due, "future") == NOW + 60
    # The lease has passed: the claimed ids (a dispatcher died sending them) are due again.
    again = claim(keys=[due, copies], args=[NOW + LEASE, 10, NOW + 2 * LEASE])
    assert sorted(again[::2]) == [b"early", b"late", b"middle"]
    assert redis.zcard(due) == 4  # a claim moves ids, it never drops one


def test_a_first_copy_comes_out_with_its_id_once(keys: tuple[Redis, str, str]) -> None:
    redis, due, copies = keys
    task = {
        "_id": "task-1",
        "user_id": "user-1",
        "type": "image",
        "status": "completed",
        "prompt": "a lighthouse",
        "created": datetime(2026, 12, 3, tzinfo=UTC),
        "updated": datetime(2026, 12, 3, tzinfo=UTC),
        "webhook_url": "http://127.0.0.1:9/hook",
    }
    message = message_for(task, EventKind.FINAL)  # type: ignore[arg-type]
    assert message is not None
    redis.zadd(due, {message["_id"]: NOW - 1, "tried-before": NOW - 2})
    redis.hset(copies, message["_id"], first_copy(message))
    claim = redis.register_script(CLAIM_SCRIPT)
    claimed = claim(keys=[due, copies], args=[NOW, 10, NOW + LEASE])
    assert claimed[0::2] == [b"tried-before", message["_id"].encode()]
    assert claimed[1] is None  # no copy: the loop reads this one from MongoDB
    assert from_first_copy(message["_id"], claimed[3]) == message
    assert redis.hlen(copies) == 0
    # Its lease passed (the dispatcher died): the next claim has no copy any more, and reads what MongoDB says.
    again = claim(keys=[due, copies], args=[NOW + LEASE, 10, NOW + 2 * LEASE])
    assert dict(zip(again[0::2], again[1::2], strict=True)) == {b"tried-before": None, message["_id"].encode(): None}


def test_a_first_copy_without_its_due_entry_is_dropped(redis_server: LoneRedis) -> None:
    redis = redis_server.redis(db=STRAY_COPIES_DB)
    redis.flushdb()
    redis.zadd(DUE_KEY, {"due": NOW})
    redis.hset(FIRST_COPY_KEY, mapping={"due": "{}", "stray": "{}"})

    async def drop() -> None:
        async with AsyncRedis(port=redis_server.port, db=STRAY_COPIES_DB) as client:
            await drop_stray_copies(client)

    asyncio.run(drop())
    assert redis.hkeys(FIRST_COPY_KEY) == [b"due"]
    redis.flushdb()
