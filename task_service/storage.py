"""Task storage for the task service (async pymongo); every per-task query is by `_id`, and carries the task's
user when the caller knows it: the shard key on a sharded MongoDB (aitask_common.sharding), and another user's
task is then simply not found.

Every filter value here comes from a proto string field (task_id, user_id, type) or
is built by the service: a JSON body cannot smuggle a query operator in.
"""

from __future__ import annotations

from typing import Any, Final, cast

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError, WriteError

from aitask_common.mongo import DUPLICATE_KEY
from aitask_common.sharding import owned_by
from aitask_common.tasks import (
    BUCKET_WIDTHS,
    COLLECTION,
    CREATED_BUCKETS_FIELD,
    IN_FLIGHT_FIELD,
    INDEXES,
    PAYLOAD_FIELDS,
    TaskDocument,
    TaskStatus,
    task_buckets,
    task_filter,
    utcnow,
)
from task_service.batching import Batcher
from task_service.newest_first import newest_first
from task_service.paging import ListFilters, Position

# "<user_id>:<idempotency key>", written only on tasks created with a key; unique with user_id (the shard key:
# a unique index on a sharded collection starts with it). The field is never null:
# FerretDB ignores `sparse`, and there two documents lacking the field do not collide but two nulls do.
IDEMPOTENCY_FIELD: Final = "idempotency"
# Digest of the validated request that made a task with an idempotency key (tells a retry from a reuse).
FINGERPRINT_FIELD: Final = "request_fingerprint"
# Most new tasks one insert_many carries.
INSERT_BATCH_MAX = 256
# One document per data migration done, by name: each runs once per database.
MIGRATIONS = "migrations"
# The migration giving older tasks their created_buckets with their user's (a database that ran the one before it,
# "created_buckets", gave them the first six only).
BUCKETS_MIGRATION: Final = "created_buckets_by_user"


class TaskStore:
    """Reads and writes the `tasks` collection."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        # Every document in the collection is a TaskDocument: mypy checks the fields read and written here.
        self.collection = cast(AsyncCollection[TaskDocument], client[database][COLLECTION])
        # Started and stopped with the server (task_service.server).
        self.inserts = Batcher("insert", self._insert_many, INSERT_BATCH_MAX)

    async def ensure_indexes(self) -> None:
        """Create the indexes the queries below rely on (idempotent)."""
        for keys in INDEXES:
            await self.collection.create_index(keys)
        # sparse: so MongoDB skips the documents without a key (FerretDB drops the option; see above).
        await self.collection.create_index([("user_id", 1), (IDEMPOTENCY_FIELD, 1)], unique=True, sparse=True)

    async def insert(self, document: TaskDocument) -> None:
        """Store a new task; DuplicateKeyError when its idempotency key is taken.

        Concurrent inserts share one insert_many: on FerretDB one multi-row INSERT costs about what one row does.
        """
        await self.inserts.submit(document)

    async def _insert_many(self, documents: list[TaskDocument]) -> list[PyMongoError | None]:
        """Insert a batch; unordered, so one document's error leaves the others stored."""
        try:
            await self.collection.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            if error.details.get("writeConcernErrors"):
                raise  # not about one document: the whole batch fails
            outcomes: list[PyMongoError | None] = [None] * len(documents)
            for write_error in error.details["writeErrors"]:
                outcomes[write_error["index"]] = _document_error(write_error)
            return outcomes
        return [None] * len(documents)

    async def get_by_idempotency(self, user_id: str, scoped_key: str) -> TaskDocument | None:
        """The user's task created with this scoped idempotency key, or None."""
        return await self.collection.find_one({IDEMPOTENCY_FIELD: scoped_key} | owned_by(user_id))

    async def get(self, task_id: str, user_id: str | None) -> TaskDocument | None:
        """One task by id (of `user_id`, when not None), or None."""
        return await self.collection.find_one(task_filter(task_id, user_id))

    async def delete(self, task_id: str, user_id: str) -> bool:
        """Delete one of the user's tasks; False when it did not exist."""
        result = await self.collection.delete_one(task_filter(task_id, user_id))
        return result.deleted_count == 1

    async def list(
        self, filters: ListFilters, limit: int, offset: int, after: Position | None = None
    ) -> list[TaskDocument]:
        """The tasks `filters` select, newest first, without base64 payloads or timelines: past `offset`, or after a
        page's last task."""
        projection = {field: False for field in PAYLOAD_FIELDS}
        if filters.task_id:  # one task at most
            query = filters.query() | (after.after() if after is not None else {})
            return await self.collection.find(query, projection).skip(offset).limit(limit).to_list()
        found = await newest_first(self.collection, filters, projection, offset + limit, after, utcnow())
        return found[offset:]

    async def add_created_buckets(self) -> int:
        """Give the tasks stored before `created_buckets` existed, or before it held their user's buckets too,
        theirs; once per database (recorded in `migrations`), since on FerretDB finding them reads every task.
        Returns how many it updated."""
        migrations = self.collection.database[MIGRATIONS]
        if await migrations.find_one({"_id": BUCKETS_MIGRATION}) is not None:
            return 0
        updated = 0
        without_user_buckets = {f"{CREATED_BUCKETS_FIELD}.{len(BUCKET_WIDTHS)}": {"$exists": False}}
        async for task in self.collection.find(without_user_buckets, {"created": True, "user_id": True}):
            buckets = task_buckets(task["created"], task["user_id"])
            await self.collection.update_one({"_id": task["_id"]}, {"$set": {CREATED_BUCKETS_FIELD: buckets}})
            updated += 1
        done = {"done_at": utcnow(), "updated": updated}
        await migrations.update_one({"_id": BUCKETS_MIGRATION}, {"$set": done}, upsert=True)
        return updated

    async def mark_in_flight(self) -> int:
        """Mark the pending and processing tasks stored before `in_flight` existed; once per database (recorded in
        `migrations`: on FerretDB, finding them reads every task). Returns how many it marked. A task an older
        dispatcher finishes after this stays marked until the reconciler meets it and takes the mark off."""
        migrations = self.collection.database[MIGRATIONS]
        if await migrations.find_one({"_id": IN_FLIGHT_FIELD}) is not None:
            return 0
        marked = 0
        for status in (TaskStatus.PENDING, TaskStatus.PROCESSING):
            unmarked = {"status": status.value, IN_FLIGHT_FIELD: {"$exists": False}}
            marked += (await self.collection.update_many(unmarked, {"$set": {IN_FLIGHT_FIELD: True}})).modified_count
        done = {"done_at": utcnow(), "updated": marked}
        await migrations.update_one({"_id": IN_FLIGHT_FIELD}, {"$set": done}, upsert=True)
        return marked


def _document_error(write_error: dict[str, Any]) -> PyMongoError:
    """What insert_one would have raised for this document."""
    kind = DuplicateKeyError if write_error["code"] == DUPLICATE_KEY else WriteError
    return kind(write_error["errmsg"], write_error["code"], write_error)
