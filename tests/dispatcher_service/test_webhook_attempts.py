"""The webhook delivery loop's attempt writer against the stack's FerretDB and Redis: a burst of attempts is
recorded in bulk writes of at most ATTEMPT_BATCH statements. FerretDB 1.24 holds a PostgreSQL connection for every
statement of one update command until the command ends: a bulk write of 150 attempts once held its whole pool and
it stopped answering every client. A message stored with its first attempt that someone stored meanwhile gets the
attempt as an update instead."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent
from redis.asyncio import Redis as AsyncRedis

from devstack.stack import LocalStack
from dispatcher_service.webhook_delivery import ATTEMPT_BATCH, AttemptWriter


class UpdateSizes(CommandListener):
    """The number of statements of every update command sent."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "update":
            self.sizes.append(len(event.command["updates"]))

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


def test_a_burst_of_attempts_is_written_in_bounded_bulk_writes(stack: LocalStack) -> None:
    sizes = UpdateSizes()
    ids = [f"msg-attempts-test-{uuid.uuid4().hex}-{n}" for n in range(3 * ATTEMPT_BATCH + 5)]

    async def burst() -> list[Any]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            f"mongodb://127.0.0.1:{stack.ports.ferretdb}/", event_listeners=[sizes]
        )
        redis = AsyncRedis(port=stack.ports.redis)
        messages = client["aitask"][f"attempts_test_{uuid.uuid4().hex}"]
        try:
            await messages.insert_many([{"_id": message_id, "attempt_count": 0} for message_id in ids])
            writer = AttemptWriter(messages, redis)
            running = asyncio.create_task(writer.run())
            update = {"$inc": {"attempt_count": 1}}
            await asyncio.gather(*(writer.write(UpdateOne({"_id": i}, update), i, None) for i in ids))
            running.cancel()
            return [document["attempt_count"] async for document in messages.find({})]
        finally:
            await messages.drop()
            await client.close()
            await redis.aclose()

    assert asyncio.run(burst()) == [1] * len(ids)
    assert sum(sizes.sizes) == len(ids) and max(sizes.sizes) <= ATTEMPT_BATCH, sizes.sizes


def test_a_first_attempt_whose_message_was_stored_meanwhile_joins_the_stored_message(stack: LocalStack) -> None:
    stored_meanwhile, fresh = (f"msg-first-test-{uuid.uuid4().hex}-{n}" for n in range(2))
    attempt = {"status_code": 204, "error": ""}

    async def write() -> dict[str, Any]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(f"mongodb://127.0.0.1:{stack.ports.ferretdb}/")
        redis = AsyncRedis(port=stack.ports.redis)
        messages = client["aitask"][f"first_attempts_test_{uuid.uuid4().hex}"]
        try:
            # The sweep's copy: pending, no attempt yet.
            await messages.insert_one({"_id": stored_meanwhile, "state": "pending", "attempt_count": 0, "attempts": []})
            writer = AttemptWriter(messages, redis)
            running = asyncio.create_task(writer.run())
            update = {"$inc": {"attempt_count": 1}, "$set": {"state": "delivered"}, "$push": {"attempts": attempt}}
            first = {"state": "delivered", "attempt_count": 1, "attempts": [attempt], "body": "{}"}
            await asyncio.gather(
                *(
                    writer.write(InsertOne({"_id": i} | first), i, None, if_stored=UpdateOne({"_id": i}, update))
                    for i in (stored_meanwhile, fresh)
                )
            )
            running.cancel()
            return {document["_id"]: document async for document in messages.find({})}
        finally:
            await messages.drop()
            await client.close()
            await redis.aclose()

    documents = asyncio.run(write())
    assert documents[fresh] == {
        "_id": fresh,
        "state": "delivered",
        "attempt_count": 1,
        "attempts": [attempt],
        "body": "{}",
    }
    # The stored one keeps what it had (no body here) and gains the attempt once.
    assert documents[stored_meanwhile] == {
        "_id": stored_meanwhile,
        "state": "delivered",
        "attempt_count": 1,
        "attempts": [attempt],
    }
