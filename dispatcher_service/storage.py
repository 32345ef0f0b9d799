"""Task transitions for the dispatcher (sync pymongo): each one is a conditional update."""

from __future__ import annotations

from typing import Any, cast

from pymongo import MongoClient, ReturnDocument

from aitask_common.tasks import COLLECTION, TaskDocument, TaskStatus, utcnow


class TaskTransitions:
    """Moves tasks through their lifecycle; an update whose precondition fails changes nothing."""

    def __init__(self, client: MongoClient[dict[str, Any]], database: str) -> None:
        self.collection = client[database][COLLECTION]

    def get(self, task_id: str) -> TaskDocument | None:
        """One task by id."""
        return cast(TaskDocument | None, self.collection.find_one({"_id": task_id}))

    def claim(self, task_id: str) -> TaskDocument | None:
        """Move a pending task to processing, counting the attempt, in one round trip; the task after
        the update, or None if it was not pending."""
        document = self.collection.find_one_and_update(
            {"_id": task_id, "status": TaskStatus.PENDING.value},
            {"$set": {"status": TaskStatus.PROCESSING.value, "updated": utcnow()}, "$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER,
        )
        return cast(TaskDocument | None, document)

    def transition(
        self,
        task_id: str,
        expected: TaskStatus,
        new: TaskStatus,
        fields: dict[str, Any] | None = None,
        attempts_delta: int = 0,
        upstream_job_id: str | None = None,
    ) -> bool:
        """Set `new` status (and `fields`, and add `attempts_delta` to attempts) only if the task is
        still `expected` (and, given `upstream_job_id`, still waits on that upstream job); True if it was."""
        update: dict[str, Any] = {"$set": {**(fields or {}), "status": new.value, "updated": utcnow()}}
        if attempts_delta:
            update["$inc"] = {"attempts": attempts_delta}
        condition = {"_id": task_id, "status": expected.value}
        if upstream_job_id is not None:
            condition["upstream_job_id"] = upstream_job_id
        return self.collection.update_one(condition, update).modified_count == 1

    def record(self, task_id: str, expected: TaskStatus, fields: dict[str, Any]) -> bool:
        """Store fields (e.g. an upstream job id) without changing status, if still `expected`."""
        update = {"$set": {**fields, "updated": utcnow()}}
        return self.collection.update_one({"_id": task_id, "status": expected.value}, update).modified_count == 1
