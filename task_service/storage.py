"""Task storage for the task service (async pymongo); every per-task query is by `_id` only."""

from __future__ import annotations

from typing import Any

from pymongo import DESCENDING, AsyncMongoClient

from aitask_common.tasks import COLLECTION, INDEXES, PAYLOAD_FIELDS


class TaskStore:
    """Reads and writes the `tasks` collection."""

    def __init__(self, client: AsyncMongoClient, database: str) -> None:
        self.collection = client[database][COLLECTION]

    async def ensure_indexes(self) -> None:
        """Create the indexes the queries below rely on (idempotent)."""
        for keys in INDEXES:
            await self.collection.create_index(keys)

    async def insert(self, document: dict[str, Any]) -> None:
        """Store a new task."""
        await self.collection.insert_one(document)

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """One task by id, or None."""
        return await self.collection.find_one({"_id": task_id})

    async def delete(self, task_id: str) -> bool:
        """Delete one task; False when it did not exist."""
        result = await self.collection.delete_one({"_id": task_id})
        return result.deleted_count == 1

    async def list(self, user_id: str, task_type: str, limit: int, offset: int) -> list[dict[str, Any]]:
        """A user's tasks, newest first, without base64 payloads."""
        query: dict[str, Any] = {"user_id": user_id}
        if task_type:
            query["type"] = task_type
        cursor = (
            self.collection.find(query, projection={field: False for field in PAYLOAD_FIELDS})
            .sort([("created", DESCENDING), ("_id", DESCENDING)])
            .skip(offset)
            .limit(limit)
        )
        return await cursor.to_list(length=limit)
