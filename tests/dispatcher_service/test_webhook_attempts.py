"""The webhook delivery loop's attempt writer against the stack's FerretDB and Redis: a burst of attempts is
recorded in bulk writes of at most ATTEMPT_BATCH statements. FerretDB 1.24 holds a PostgreSQL connection for every
statement of one update command until the command ends: a bulk write of 150 attempts once held its whole pool and
it stopped answering every client."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pymongo import AsyncMongoClient, UpdateOne
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
