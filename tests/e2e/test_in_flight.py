"""`in_flight` (aitask_common.tasks.IN_FLIGHT_FIELD), end to end on the real FerretDB: set at create, gone once the
task is final however it got there, and given once to the tasks in flight stored before it existed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from aitask_common.tasks import IN_FLIGHT_FIELD
from devstack.stack import LocalStack
from task_service.storage import MIGRATIONS, TaskStore
from tests.conftest import wait_for_status
from tests.e2e.helpers import SEEDREAM, faults
from tests.e2e.test_cancel import IMAGES


def create(rest: httpx.Client, user_id: str) -> str:
    response = rest.post("/api/v1/ai/image/task", json={"prompt": "in flight", "user_id": user_id, **SEEDREAM})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def test_a_task_is_in_flight_from_its_create_until_it_is_final(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with faults(stack, IMAGES, latency_s=3.0):
        completed, cancelled = create(rest, user_id), create(rest, user_id)
        assert stack.tasks().find_one({"_id": completed})[IN_FLIGHT_FIELD] is True
        assert rest.post(f"/api/v1/ai/task/{cancelled}/cancel", json={}).status_code == 200
    wait_for_status(rest, completed, {"completed"})
    for task_id in (completed, cancelled):
        assert IN_FLIGHT_FIELD not in stack.tasks().find_one({"_id": task_id})


def test_tasks_in_flight_stored_before_the_field_existed_are_marked_once(stack: LocalStack) -> None:
    async def scenario() -> tuple[int, int, dict[str, Any]]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.env["MONGO_URL"], tz_aware=True)
        database = client["aitask_in_flight_migration"]
        try:
            store = TaskStore(client, database.name)  # type: ignore[arg-type]
            statuses = ("pending", "processing", "completed", "failed", "cancelled")
            await database["tasks"].insert_many([{"_id": status, "status": status} for status in statuses])
            first = await store.mark_in_flight()
            await database["tasks"].insert_one({"_id": "later", "status": "pending"})
            second = await store.mark_in_flight()
            assert await database[MIGRATIONS].find_one({"_id": IN_FLIGHT_FIELD}) is not None
            stored = {task["_id"]: task.get(IN_FLIGHT_FIELD) async for task in database["tasks"].find()}
            return first, second, stored
        finally:
            await client.drop_database(database.name)
            await client.close()

    first, second, stored = asyncio.run(scenario())
    assert (first, second) == (2, 0)  # the second start finds the migration recorded and changes nothing
    assert stored == {
        "pending": True,
        "processing": True,
        "completed": None,
        "failed": None,
        "cancelled": None,
        "later": None,
    }
