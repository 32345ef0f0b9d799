"""A task's timeline: what happened to it, oldest first, stored on its document so it outlives every restart.

Each lifecycle write appends its entries in the same conditional update (no extra round trip, and an entry exists
exactly when its change does). Polls, frequent and many, wait in a Redis list while the upstream job runs and
join the timeline with the task's final write. Webhook attempts and charges live in their own collections and are
merged in when the timeline is read (task_service/admin.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from redis import Redis

from aitask_common.tasks import HoldReason, TaskDocument, TaskStatus, utcnow

FIELD = "timeline"
POLLS_KEY_PREFIX = "aitask:timeline:polls:"
# A task polled more often than this keeps its latest polls only (the older ones are dropped, uncounted).
MAX_POLLS_KEPT = 200


def entry(event: str, **detail: Any) -> dict[str, Any]:
    """One timeline entry; empty details are left out."""
    return {"at": utcnow(), "event": event, **{key: value for key, value in detail.items() if value not in (None, "")}}


def with_entries(update: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """`update` that also appends `entries` to the timeline."""
    if entries:
        update["$push"] = {FIELD: {"$each": entries}}
    return update


def write_entries(fields: dict[str, Any], new: TaskStatus | None = None) -> list[dict[str, Any]]:
    """The entries a dispatcher write of `fields` (and, given `new`, a move to that status) makes."""
    entries = []
    if fields.get("upstream_job_id"):
        entries.append(entry("submitted", upstream_job_id=fields["upstream_job_id"]))
    if fields.get("output"):
        output = fields["output"]
        entries.append(entry("output_stored", size=output.get("size"), content_type=output.get("content_type")))
    if new is TaskStatus.PROCESSING:
        entries.append(entry("claimed"))
    elif new is TaskStatus.PENDING and fields.get("error_message"):
        # Back to pending after an upstream error: a retry. (With nothing sent, a hold: see `with_hold`.)
        entries.append(entry("retry_scheduled", error=fields["error_message"]))
    elif new is not None and new.is_final:
        served = {"served_provider": fields.get("served_provider"), "served_model": fields.get("served_model")}
        entries.append(entry(new.value, error=fields.get("error_message"), **served))
    return entries


def with_hold(update: dict[str, Any], reason: HoldReason) -> dict[str, Any]:
    """`update` (a move back to pending with nothing sent) that takes back the claim's attempt and its `claimed`
    entry, the last one (nothing else is written while a task is claimed), and counts the hold in the task's
    held_* fields instead."""
    update["$pop"] = {FIELD: 1}
    update["$set"] |= {"held_reason": reason.value, "held_last_at": utcnow()}
    update["$inc"] = update.get("$inc", {}) | {"attempts": -1, "held_times": 1}
    return update


def held_entry(document: TaskDocument) -> dict[str, Any] | None:
    """The task's holds as one entry (at the last), or None if it was never held back."""
    if not document.get("held_times"):
        return None
    return {
        "at": document["held_last_at"],
        "event": "held_back",
        "times": document["held_times"],
        "reason": document.get("held_reason", ""),
    }


def keep_poll(redis: Redis, task_id: str, state: str, progress: int, keep_seconds: float) -> None:
    """Note one poll of the task's upstream job until its final write puts it on the timeline (one round trip)."""
    key = POLLS_KEY_PREFIX + task_id
    poll = {"at": utcnow().isoformat(), "event": "polled", "state": state} | (
        {"progress": progress} if progress else {}
    )
    with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(key, json.dumps(poll))
        pipe.ltrim(key, -MAX_POLLS_KEPT, -1)
        pipe.expire(key, int(keep_seconds))
        pipe.execute()


def noted_polls(redis: Redis, task_id: str) -> list[dict[str, Any]]:
    """The task's polls noted so far, as timeline entries (`forget_polls` once they are stored)."""
    polls = [json.loads(item) for item in redis.lrange(POLLS_KEY_PREFIX + task_id, 0, -1)]
    return [poll | {"at": datetime.fromisoformat(poll["at"])} for poll in polls]


def forget_polls(redis: Redis, task_id: str) -> None:
    """Drop the task's noted polls: they are on its timeline."""
    redis.delete(POLLS_KEY_PREFIX + task_id)
