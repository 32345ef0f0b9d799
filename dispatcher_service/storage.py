"""Task transitions for the dispatcher (sync pymongo): each one is a conditional update.

Each names the task's user beside its id (the shard key on a sharded MongoDB, aitask_common.sharding): a job
carries it, and a step learns it from the claim that starts it. `owner` is the one read by id alone, for a job
that came without it.

Every update that changes what a client sees publishes a task change notice (aitask_common.events) after the
write, for the task service's waiters and watchers.
"""

from __future__ import annotations

from typing import Any, cast

from pymongo import MongoClient, ReturnDocument
from pymongo.collection import Collection
from redis import Redis

from aitask_common.events import EventKind, publish
from aitask_common.tasks import (
    COLLECTION,
    HoldReason,
    TaskDocument,
    TaskStatus,
    out_of_flight,
    task_filter,
    utcnow,
)
from aitask_common.timeline import forget_polls, noted_polls, with_entries, with_hold, write_entries
from aitask_common.webhooks import MESSAGES_COLLECTION, known_webhook_events, may_send_final, record_change

# Fields `record` may write that no client sees: storing them alone publishes no notice.
INTERNAL_FIELDS = frozenset({"upstream_job_id", "submitted", "generated"})


class TaskTransitions:
    """Moves tasks through their lifecycle; an update whose precondition fails changes nothing."""

    def __init__(self, client: MongoClient[dict[str, Any]], database: str, redis: Redis | None = None) -> None:
        self.collection = client[database][COLLECTION]
        # Where change notices go; None publishes none.
        self.redis = redis

    @property
    def webhook_messages(self) -> Collection[Any]:
        """Where the webhook messages of task changes go (aitask_common.webhooks)."""
        return self.collection.database[MESSAGES_COLLECTION]

    def notify(self, task_id: str, user_id: str, kind: EventKind, document: TaskDocument | None = None) -> None:
        """Store the webhook message the change makes, if any (given the task after it, without reading it
        again), then publish a change notice for `task_id` (best effort; nothing without a Redis)."""
        record_change(self.collection, self.webhook_messages, task_id, user_id, kind, document, self.redis)
        if self.redis is not None:
            publish(self.redis, task_id, kind)

    def get(self, task_id: str, user_id: str | None) -> TaskDocument | None:
        """One task by id, of `user_id` (None, for an operator's tool: any user's, asking every shard)."""
        return cast(TaskDocument | None, self.collection.find_one(task_filter(task_id, user_id)))

    def owner(self, task_id: str) -> str | None:
        """The user of a task known by its id alone (None: no such task); asks every shard of a sharded MongoDB."""
        document = self.collection.find_one({"_id": task_id}, {"user_id": True})
        return document["user_id"] if document is not None else None

    def claim(self, task_id: str, user_id: str) -> TaskDocument | None:
        """Move a pending task to processing, counting the attempt, in one round trip; the task after
        the update, or None if it was not pending or its deadline has passed."""
        now = utcnow()
        document = self.collection.find_one_and_update(
            task_filter(task_id, user_id)
            | {
                "status": TaskStatus.PENDING.value,
                "$or": [{"deadline": None}, {"deadline": {"$gt": now}}],
            },
            with_entries(
                {"$set": {"status": TaskStatus.PROCESSING.value, "updated": now}, "$inc": {"attempts": 1}},
                write_entries({}, TaskStatus.PROCESSING),
            ),
            return_document=ReturnDocument.AFTER,
        )
        if document is not None:
            self.notify(task_id, user_id, EventKind.STATUS, cast(TaskDocument, document))
        return cast(TaskDocument | None, document)

    def transition(
        self,
        task_id: str,
        user_id: str,
        expected: TaskStatus,
        new: TaskStatus,
        fields: dict[str, Any] | None = None,
        attempts_delta: int = 0,
        upstream_job_id: str | None = None,
        held: HoldReason | None = None,
    ) -> bool:
        """Set `new` status (and `fields`, and add `attempts_delta` to attempts) only if the task is
        still `expected` (and, given `upstream_job_id`, still waits on that upstream job); True if it was.
        `held`: a claim handed back with nothing sent, whose attempt and `claimed` entry are taken back."""
        entries = write_entries(fields or {}, new)
        # The polls of the upstream job join the timeline before its outcome.
        polls_from = self.redis if new.is_final and upstream_job_id is not None else None
        if polls_from is not None:
            entries[-1:-1] = noted_polls(polls_from, task_id)
        update = with_entries({"$set": {**(fields or {}), "status": new.value, "updated": utcnow()}}, entries)
        if attempts_delta:
            update["$inc"] = {"attempts": attempts_delta}
        if held is not None:
            update = with_hold(update, held)
        events = known_webhook_events(task_id)
        final_webhook = new.is_final and may_send_final(events)
        if new.is_final:
            update = out_of_flight(update, final_webhook)
        condition = task_filter(task_id, user_id) | {"status": expected.value}
        if upstream_job_id is not None:
            condition["upstream_job_id"] = upstream_job_id
        kind = EventKind.FINAL if new.is_final else EventKind.STATUS
        if final_webhook or (not new.is_final and (events is None or bool(events))):
            # The change may make a webhook message carrying the task after it: read in the same step (a final
            # message's copy goes to the delivery loop through Redis, aitask_common.webhooks).
            document = self.collection.find_one_and_update(condition, update, return_document=ReturnDocument.AFTER)
            changed = document is not None
        else:
            changed = self.collection.update_one(condition, update).modified_count == 1
            document = None
        if changed:
            if polls_from is not None:
                forget_polls(polls_from, task_id)
            self.notify(task_id, user_id, kind, cast(TaskDocument | None, document))
        return changed

    def record(self, task_id: str, user_id: str, expected: TaskStatus, fields: dict[str, Any]) -> bool:
        """Store fields (e.g. an upstream job id) without changing status, if still `expected`."""
        update = with_entries({"$set": {**fields, "updated": utcnow()}}, write_entries(fields))
        condition = task_filter(task_id, user_id) | {"status": expected.value}
        changed = self.collection.update_one(condition, update).modified_count == 1
        if changed and "progress" in fields:
            self.notify(task_id, user_id, EventKind.PROGRESS)
        elif changed and not INTERNAL_FIELDS.issuperset(fields):
            self.notify(task_id, user_id, EventKind.STATUS)
        return changed
