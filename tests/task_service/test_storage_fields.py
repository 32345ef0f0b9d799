"""The task store names only fields of the task document's schema (aitask_common.tasks.TaskDocument).

mypy checks every `task["..."]` against the TypedDict; the field names inside queries, projections
and indexes are plain strings, so this test records what the store sends MongoDB and checks each name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aitask_common.tasks import COLLECTION, TaskDocument
from task_service.paging import ListFilters
from task_service.storage import TaskStore

FIELDS = TaskDocument.__required_keys__ | TaskDocument.__optional_keys__


class Cursor:
    def __init__(self, sent: list[tuple[str, Any]]) -> None:
        self.sent = sent

    def skip(self, count: int) -> Cursor:
        return self

    def limit(self, count: int) -> Cursor:
        return self

    async def to_list(self, length: int | None = None) -> list[TaskDocument]:
        return []


class DeleteResult:
    deleted_count = 1


class Collection:
    """Records every filter, projection, sort and index key the store sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def create_index(self, keys: list[tuple[str, int]], **options: Any) -> None:
        self.sent.append(("index", dict(keys)))

    async def find_one(self, query: dict[str, Any]) -> None:
        self.sent.append(("find_one", query))

    async def delete_one(self, query: dict[str, Any]) -> DeleteResult:
        self.sent.append(("delete_one", query))
        return DeleteResult()

    def find(self, query: dict[str, Any], projection: dict[str, bool]) -> Cursor:
        self.sent.append(("find", query))
        self.sent.append(("projection", projection))
        return Cursor(self.sent)


def test_every_field_the_store_names_is_a_task_document_field() -> None:
    collection = Collection()
    store = TaskStore({"db": {COLLECTION: collection}}, "db")  # type: ignore[arg-type]

    async def use_every_query() -> None:
        await store.ensure_indexes()
        await store.get("01KBGZ0000000000000000TEST", "user-1")
        await store.get_by_idempotency("user-1", "user-1:key")
        await store.delete("01KBGZ0000000000000000TEST", "user-1")
        await store.list(ListFilters("user-1", "image", "completed"), 10, 0)

    asyncio.run(use_every_query())
    kinds = {kind for kind, _ in collection.sent}
    assert kinds == {"index", "find_one", "delete_one", "find", "projection"}
    named = {name for _, fields in collection.sent for name in fields}
    assert {"user_id", "type", "status", "created", "created_buckets", "_id", "idempotency", "image_base64"} <= named
    assert named <= FIELDS, f"not TaskDocument fields: {sorted(named - FIELDS)}"
