"""Webhook messages (Standard Webhooks v1): which task changes make one, what it carries, and how it is stored.

Whoever changes a task records its message in the `webhook_messages` collection right after the task's own write
(the dispatcher's TaskTransitions, the task service's cancel, the deadline sweep); the dispatcher's delivery loop
(dispatcher_service.webhook_delivery) sends what is stored, so a message outlives any restart. A message's id is
made from its task and event, so recording the same change twice stores it once.

The same step adds the message's id to a Redis sorted set scored by when it is due (DUE_KEY): the delivery loop
takes due ids from it instead of asking MongoDB for due messages (FerretDB answers a range query on a due time by
reading every pending message). MongoDB stays the truth: the loop rebuilds the set from it when Redis loses it.

The exception, and the common case on the task path, is a worker's final message: the task's final write already
stored all it carries, so the worker only adds its id to the due set, with a copy of the task as that write left it
(FINAL_COPY_PREFIX, for the delivery loop to render the message from without reading MongoDB), and the loop stores
the message with its first attempt. The loop's sweep stores any whose id Redis lost.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, NotRequired, TypedDict

import bson
from cachetools import LRUCache
from google.protobuf import json_format
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from aitask_common.events import EventKind
from aitask_common.logging import get_logger
from aitask_common.outputs import OutputLinks
from aitask_common.tasks import TaskDocument, TaskStatus, task_filter, task_to_proto, utcnow
from aitask_common.tracing import current_carrier

log = get_logger(__name__)

MESSAGES_COLLECTION: Final = "webhook_messages"
# Ids of pending messages, scored by when their next attempt is due (epoch seconds).
DUE_KEY: Final = "aitask:webhooks:due"
# Present while DUE_KEY holds every pending message: Redis losing its data loses it too, and the loop rebuilds.
DUE_COMPLETE_KEY: Final = "aitask:webhooks:due-complete"
# Ids of the final messages the delivery loop stored lately, scored by when: the sweep for lost final messages asks
# this set before reading MongoDB (a message neither here nor due is read). Each sweep prunes what is older than
# three sweep intervals.
STORED_FINALS_KEY: Final = "aitask:webhooks:stored-finals"
# + task id: the task as its final write left it (BSON), from the worker that indexed its final message until the
# delivery loop's claim takes it. A copy missing (expired, too large, lost with Redis) costs the claim a read of the
# message, then of the task, in MongoDB.
FINAL_COPY_PREFIX: Final = "aitask:webhooks:final-copy:"
FINAL_COPY_SECONDS: Final = 600
# A copy's one field that is not the task's: the trace context of the run that made it (the message keeps it).
TRACE_FIELD: Final = "trace"
# A larger task (an image kept inline) is read from MongoDB instead.
FINAL_COPY_MAX_BYTES: Final = 64 * 1024
MESSAGE_INDEXES: list[list[tuple[str, int]]] = [
    # The rebuild of DUE_KEY: pending messages.
    [("state", 1), ("next_attempt_at", 1)],
    # A task's delivery log.
    [("task_id", 1), ("created", 1)],
]
# The longest response excerpt an attempt keeps.
EXCERPT_CHARS: Final = 200


class WebhookEvent(StrEnum):
    """What a create may subscribe to (`webhook_events`)."""

    STARTED = "started"
    PROGRESS = "progress"
    FINAL = "final"


DEFAULT_EVENTS: Final = (WebhookEvent.FINAL.value,)


class MessageState(StrEnum):
    """Where a message is in its delivery."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    STOPPED = "stopped"


FINAL_TYPES: Final = {
    TaskStatus.COMPLETED: "task.completed",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.CANCELLED: "task.cancelled",
}


class AttemptRecord(TypedDict):
    """One delivery attempt, as the delivery log shows it."""

    at: datetime
    status_code: int
    error: str
    latency_ms: int
    next_attempt_at: datetime | None
    response_excerpt: str


class MessageDocument(TypedDict):
    """A stored webhook message."""

    _id: str
    task_id: str
    user_id: str
    url: str
    event: str
    type: str
    body: str
    state: str
    created: datetime
    next_attempt_at: datetime
    attempt_count: int
    attempts: list[AttemptRecord]
    delivered: NotRequired[datetime]
    # The trace context of the change that made it, when tracing is on: its deliveries join the task's trace.
    trace: NotRequired[dict[str, str]]


def event_of(document: TaskDocument, kind: EventKind) -> tuple[WebhookEvent, str, str] | None:
    """(event, type, id suffix) of a task change, or None when it makes no webhook message."""
    status = TaskStatus(document["status"])
    if kind is EventKind.FINAL and status.is_final:
        return WebhookEvent.FINAL, FINAL_TYPES[status], "final"
    if kind is EventKind.PROGRESS and status is TaskStatus.PROCESSING:
        return WebhookEvent.PROGRESS, "task.progress", f"progress-{document.get('progress', 0)}"
    if kind is EventKind.STATUS and status is TaskStatus.PROCESSING:
        return WebhookEvent.STARTED, "task.started", "started"
    return None


# Signs the output links in message bodies; every process that stores messages installs its own at start-up (the
# task service, each dispatcher worker, the dispatcher's delivery loop). The body is made once, when the message is
# stored, and sent unchanged on every retry: its link is valid for OUTPUT_URL_TTL_SECONDS from then.
_output_links: OutputLinks | None = None


def install_output_links(links: OutputLinks) -> None:
    """Sign output links in the bodies this process renders with `links`."""
    global _output_links
    _output_links = links


def render_body(document: TaskDocument, event_type: str, at: datetime) -> str:
    """The message body: the event type, when, and the task as GET …/task/result/{id} shows it."""
    task = task_to_proto(document)
    if _output_links is not None:
        _output_links.sign(task)
    data = json_format.MessageToDict(task, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    timestamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": data}, separators=(",", ":"))


def final_message_id(task_id: str) -> str:
    """The id of a task's final message."""
    return f"msg_{task_id}_final"


def subscribed_event(document: TaskDocument, kind: EventKind) -> tuple[WebhookEvent, str, str] | None:
    """`event_of` a task change, or None unless the task has a live webhook subscribed to that event."""
    if not document.get("webhook_url") or document.get("webhook_stopped"):
        return None
    event = event_of(document, kind)
    if event is None or event[0].value not in document.get("webhook_events", DEFAULT_EVENTS):
        return None
    return event


def message_for(document: TaskDocument, kind: EventKind, trace: dict[str, str] | None = None) -> MessageDocument | None:
    """The message a task change makes, if the task has a webhook subscribed to that event; `trace` is the change's
    trace context (aitask_common.tracing.current_carrier)."""
    event = subscribed_event(document, kind)
    if event is None:
        return None
    webhook_event, event_type, suffix = event
    now = utcnow()
    message: MessageDocument = {
        "_id": final_message_id(document["_id"]) if suffix == "final" else f"msg_{document['_id']}_{suffix}",
        "task_id": document["_id"],
        "user_id": document["user_id"],
        "url": document["webhook_url"],
        "event": webhook_event.value,
        "type": event_type,
        "body": render_body(document, event_type, now),
        "state": MessageState.PENDING.value,
        "created": now,
        "next_attempt_at": now,
        "attempt_count": 0,
        "attempts": [],
    }
    if trace:
        message["trace"] = trace
    return message


# Only tasks with a webhook: for every other task, recording a change costs one read that finds nothing.
WITH_WEBHOOK: Final[dict[str, Any]] = {"webhook_url": {"$gt": ""}}


# What this process knows of tasks' webhooks (set at create, never changed), by task id: the events subscribed to,
# () for none. A worker claims a task (which reads it) before it moves it, so on the task path a change needs no read
# to know whether it makes a message.
_webhook_events: LRUCache[str, tuple[str, ...]] = LRUCache(maxsize=100_000)
_webhook_events_lock = threading.Lock()


def webhook_events_of(document: Any) -> tuple[str, ...]:
    """The events the task `document` has a webhook for (() for none)."""
    return tuple(document.get("webhook_events", DEFAULT_EVENTS)) if document.get("webhook_url") else ()


def remember_webhook(document: Any) -> None:
    """Note which events the task `document` has a webhook for."""
    events = webhook_events_of(document)
    with _webhook_events_lock:
        _webhook_events[document["_id"]] = events


def known_webhook_events(task_id: str) -> tuple[str, ...] | None:
    """The events the task has a webhook for (() for none), or None if this process does not know."""
    with _webhook_events_lock:
        return _webhook_events.get(task_id)


def may_send_final(events: tuple[str, ...] | None) -> bool:
    """Whether a task whose webhook is for `events` (None: this process does not know) may owe a final message."""
    return events is None or WebhookEvent.FINAL.value in events


def final_copy_key(task_id: str) -> str:
    """Where a worker leaves its copy of a final task for the delivery loop."""
    return FINAL_COPY_PREFIX + task_id


def task_of_final_message(message_id: str) -> str | None:
    """The task whose final message `message_id` is, or None for any other message."""
    prefix, suffix = "msg_", "_final"
    if message_id.startswith(prefix) and message_id.endswith(suffix):
        return message_id[len(prefix) : -len(suffix)]
    return None


def epoch(moment: datetime) -> float:
    """A stored time as epoch seconds (a naive one is UTC)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def due_entry(message: MessageDocument) -> dict[str, float]:
    """A message's DUE_KEY member and score."""
    return {message["_id"]: epoch(message["next_attempt_at"])}


def _due_not_indexed(message_id: str, error: RedisError) -> None:
    log.warning(
        "webhook message not indexed as due: the delivery loop's sweep or reconcile finds it",
        message_id=message_id,
        error=str(error),
    )


def record_change(
    tasks: Collection[Any],
    messages: Collection[Any],
    task_id: str,
    user_id: str,
    kind: EventKind,
    document: Any = None,
    redis: Redis | None = None,
) -> None:
    """Store the webhook message a task change makes, if any, and index it as due in `redis` (sync; the
    dispatcher). A final message is only indexed, beside a copy of `document` (the task after its final write):
    that write stored everything the message carries, and the delivery loop renders the message from the copy and
    stores it with its first attempt (so a burst of tasks pays one Redis round trip each; the loop runs at a lower
    priority). Never raises: a failed write is logged (the delivery loop's sweep stores a lost final message
    later, its reconcile indexes a stored one), and the task change stands."""
    try:
        if document is not None:
            remember_webhook(document)
        events = known_webhook_events(task_id)
        if events is None:
            document = tasks.find_one(task_filter(task_id, user_id) | WITH_WEBHOOK)
            if document is None:
                remember_webhook({"_id": task_id})
                return
            remember_webhook(document)
            events = known_webhook_events(task_id)
        if not events:
            return
        if kind is EventKind.FINAL and redis is not None:
            if WebhookEvent.FINAL.value in events:
                message_id = final_message_id(task_id)
                copy = b""
                if document is not None:
                    carrier = current_carrier()
                    copy = bson.encode(document | {TRACE_FIELD: carrier} if carrier else document)
                try:
                    with redis.pipeline(transaction=False) as pipe:
                        if 0 < len(copy) <= FINAL_COPY_MAX_BYTES:  # before the id is due: the claim finds it
                            pipe.set(final_copy_key(task_id), copy, ex=FINAL_COPY_SECONDS)
                        pipe.zadd(DUE_KEY, {message_id: time.time()}, nx=True)
                        pipe.execute()
                except RedisError as error:
                    _due_not_indexed(message_id, error)
            return
        if document is None:
            document = tasks.find_one(task_filter(task_id, user_id))
        message = message_for(document, kind, current_carrier()) if document is not None else None
        if message is None:
            return
        messages.insert_one(message)
        if redis is not None:
            try:
                redis.zadd(DUE_KEY, due_entry(message))
            except RedisError as error:
                _due_not_indexed(message["_id"], error)
    except DuplicateKeyError:
        pass  # recorded already
    except PyMongoError as error:
        log.error("webhook message not stored", task_id=task_id, kind=kind.value, error=str(error))


async def record_change_async(
    messages: AsyncCollection[Any], document: TaskDocument, kind: EventKind, redis: AsyncRedis | None
) -> None:
    """`record_change` for a caller holding the task after its change (the task service, the delivery loop)."""
    message = message_for(document, kind, current_carrier())
    if message is None:
        return
    try:
        await messages.insert_one(message)
    except DuplicateKeyError:
        return
    except PyMongoError as error:
        log.error("webhook message not stored", task_id=document["_id"], kind=kind.value, error=str(error))
        return
    if redis is not None:
        try:
            await redis.zadd(DUE_KEY, due_entry(message))
        except RedisError as error:
            _due_not_indexed(message["_id"], error)
