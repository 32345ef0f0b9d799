"""The task document: states, types, and its conversion to the public `Task` message.

One `tasks` collection holds every task type; MongoDB is the source of truth.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from aitask.v1 import task_service_pb2
from aitask_common.queue_shards import user_key
from aitask_common.sharding import owned_by

COLLECTION = "tasks"

# Indexes created at start-up (see DESIGN.md "Storage and state").
INDEXES: list[list[tuple[str, int]]] = [
    [("user_id", 1), ("created", -1)],
    # The retention sweep's old tasks (dispatcher_service/retention.py).
    [("created", -1)],
    [("user_id", 1), ("type", 1), ("created", -1)],
    [("status", 1), ("updated", 1)],
    # The reconciler's tasks in flight, quiet since a time (dispatcher_service/reconciler.py).
    [("in_flight", 1), ("updated", 1)],
    # The reconciler's sweep of pending tasks past their deadline.
    [("status", 1), ("deadline", 1)],
    # The settlement pass's tasks holding credit (dispatcher_service/settlement.py).
    [("billing_open", 1)],
    # Lists newest first, a bucket at a time (task_service/newest_first.py); multikey on MongoDB.
    [("created_buckets", 1)],
    # The webhook sweep's tasks that turned final in its window (FINAL_BUCKETS_FIELD).
    [("final_buckets", 1)],
]

# A task's creation time (UTC) as ISO 8601 prefixes of its year, month, day, hour, minute and second: equality
# keys, so a store that filters only by equality can walk the tasks newest first (task_service/newest_first.py).
# Each width is distinct, so the six share one array field and one index. The same six again behind
# "<user_id>|" (task_buckets): a user's list probes only that user's tasks in a bucket, however busy the bucket
# and however many tasks the user has (an equality on the bucket and another on user_id made PostgreSQL read
# one of the two whole: all of a second's tasks, or all of a heavy user's).
CREATED_BUCKETS_FIELD = "created_buckets"
BUCKET_WIDTHS = (4, 7, 10, 13, 16, 19)
USER_BUCKET_SEPARATOR = "|"  # never in a bucket key, so "<user_id>|<key>" names one user's bucket whatever the id

# Set (true) on a priced task from its create until its credit is settled or refunded.
BILLING_OPEN_FIELD = "billing_open"

# Set (true) on a task from its create until it turns final: the equality that finds the tasks in flight without
# reading the others. FerretDB hands an equality to PostgreSQL, where the index above gets a GIN twin; `status`
# has none (devstack/postgres.py), so an equality on it reads every task.
IN_FLIGHT_FIELD = "in_flight"


def out_of_flight(update: dict[str, Any], final_webhook: bool = False) -> dict[str, Any]:
    """`update` (a MongoDB update document turning a task final) also taking the task out of flight and, for a task
    that may have a final webhook, filing it under its final write's buckets (FINAL_BUCKETS_FIELD, from the
    `updated` the update sets)."""
    update = update | {"$unset": {**update.get("$unset", {}), IN_FLIGHT_FIELD: ""}}
    if final_webhook:
        update["$set"] = {**update["$set"], FINAL_BUCKETS_FIELD: final_buckets(update["$set"]["updated"])}
    return update


def task_filter(task_id: str, user_id: str | None) -> dict[str, Any]:
    """The filter of one task: its `_id` and, when its user is known, the shard key that routes it to one shard
    of a sharded MongoDB (aitask_common.sharding). None where the user is not known (an admin's read by id, a
    signed output link): that query asks every shard."""
    return {"_id": task_id} | (owned_by(user_id) if user_id is not None else {})


# Fields too large for list responses (or not in them).
PAYLOAD_FIELDS = ("image_base64", "timeline")


def created_buckets(created: datetime) -> list[str]:
    """The year, month, day, hour, minute and second `created` falls in: ["2026", …, "2026-12-04T07:31:15"]."""
    text = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return [text[:width] for width in BUCKET_WIDTHS]


# Set when a task that may have a final webhook turns final: the hour and the minute of its final write (ISO 8601
# prefixes, as created_buckets). Equality keys: the webhook sweep (dispatcher_service/webhook_delivery.py) reads the
# tasks that turned final in its window from PostgreSQL's index, where a range on `updated` read every task.
FINAL_BUCKETS_FIELD = "final_buckets"
FINAL_BUCKET_WIDTHS = (len("2026-12-05T07"), len("2026-12-05T07:26"))
# A sweep's span up to this long is read a minute at a time; a longer one (a new dispatcher's first look back, or
# the look back after Redis lost the due set) an hour at a time.
MINUTE_BUCKETS_UP_TO = timedelta(hours=2)


def final_buckets(at: datetime) -> list[str]:
    """The hour and minute `at` (naive: UTC, as MongoDB returns it) falls in: ["2026-12-05T07", "2026-12-05T07:26"]."""
    text = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    return [text[:width] for width in FINAL_BUCKET_WIDTHS]


def final_buckets_between(since: datetime, until: datetime) -> list[str]:
    """The keys of the buckets that together hold every instant from `since` up to `until`, oldest first."""
    hourly = until - since > MINUTE_BUCKETS_UP_TO
    step = timedelta(hours=1) if hourly else timedelta(minutes=1)
    at = since.astimezone(UTC).replace(minute=0 if hourly else since.minute, second=0, microsecond=0)
    keys = []
    while at < until:
        keys.append(final_buckets(at)[0 if hourly else 1])
        at += step
    return keys


def user_bucket(user_id: str, key: str) -> str:
    """The bucket `key` of one user's tasks."""
    return f"{user_id}{USER_BUCKET_SEPARATOR}{key}"


def task_buckets(created: datetime, user_id: str) -> list[str]:
    """What a task stores in CREATED_BUCKETS_FIELD: its six buckets, then the same six of its user's."""
    keys = created_buckets(created)
    return keys + [user_bucket(user_id, key) for key in keys]


def bucket_start(key: str) -> datetime:
    """The first instant of the bucket `key` names."""
    day = len("2026-12-04")
    return datetime.fromisoformat(key if len(key) >= day else (key + "-01-01")[:day]).replace(tzinfo=UTC)


class TaskStatus(StrEnum):
    """Lifecycle: pending → processing → completed | failed, plus cancelled."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether no further transition is allowed."""
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class CancelReason(StrEnum):
    """Why a task was cancelled (`cancel_reason`)."""

    USER = "user"
    DEADLINE = "deadline"


class HoldReason(StrEnum):
    """Why a claimed task went back to pending with nothing sent (`held_reason`)."""

    CAP = "cap"
    BREAKER = "breaker"
    PROVIDER = "provider"


class TaskType(StrEnum):
    """What a task generates."""

    IMAGE = "image"
    VIDEO = "video"
    TEXT = "text"


class TaskParameters(TypedDict, total=False):
    """What the client asked for beyond the prompt, validated against the model's catalogue entry."""

    priority: str
    size: str
    aspect_ratio: str
    seed: int
    max_tokens: int
    temperature: float
    response_format: str


class TokenUsage(TypedDict):
    """Tokens a text task used, as the upstream reported them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OutputDocument(TypedDict):
    """The task's image or video as copied into the output store (aitask_common.outputs)."""

    size: int
    content_type: str
    sha256: str
    stored: datetime


class GeneratedImage(TypedDict):
    """An image the vendor made (and was paid for), kept on the processing task until its copy is stored: a run
    after a failed copy copies it again instead of asking the vendor for (and paying for) another."""

    image_url: str
    image_base64: str
    revised_prompt: str


class PriceDocument(TypedDict, total=False):
    """A model's price in credits (aitask_common/prices.py)."""

    per_image: int
    per_video: int
    per_1k_input_tokens: int
    per_1k_output_tokens: int


class BillingDocument(TypedDict):
    """What a priced task reserved and the price it is settled at."""

    reserved: int
    price: PriceDocument


class TaskDocument(TypedDict):
    """A task as stored in the `tasks` collection: every field name and type in one place (mypy checks
    each `task["..."]` against it). The first group is written at create; the rest as the task moves."""

    _id: str
    type: str
    status: str
    user_id: str
    provider: str
    model: str
    prompt: str
    parameters: TaskParameters
    attempts: int
    created: datetime
    updated: datetime
    # Held back with nothing sent (a full cap, an open breaker, no live provider): how often, when last, why
    # (HoldReason). Counted here rather than on the timeline, so a task held for hours keeps a short one.
    held_times: NotRequired[int]
    held_last_at: NotRequired[datetime]
    held_reason: NotRequired[str]
    # task_buckets(created, user_id), written at create (older tasks get it from TaskStore.add_created_buckets).
    created_buckets: NotRequired[list[str]]
    # "<user_id>:<idempotency key>" and the digest of the request that made it (only with a key).
    idempotency: NotRequired[str]
    request_fingerprint: NotRequired[str]
    # Asynchronous (video) models: the vendor's job id, stored before any poll, and when it was submitted.
    upstream_job_id: NotRequired[str]
    submitted: NotRequired[datetime]
    # While processing: the upstream's progress, 0-100, where it reports one.
    progress: NotRequired[int]
    # Outcome.
    image_url: NotRequired[str]
    image_base64: NotRequired[str]
    video_url: NotRequired[str]
    text_result: NotRequired[str]
    revised_prompt: NotRequired[str]
    usage: NotRequired[TokenUsage]
    error_message: NotRequired[str]
    # Who really serves the task (API.md "Which model served a task"), written at create; absent on older tasks.
    served_provider: NotRequired[str]
    served_model: NotRequired[str]
    # The create allowed a fallback (aitask_common/fallbacks.py); absent: it did not.
    allow_fallback: NotRequired[bool]
    # When a task not started upstream by then is cancelled (the create's deadline_seconds), and why a
    # cancelled task was cancelled (CancelReason).
    deadline: NotRequired[datetime]
    cancel_reason: NotRequired[str]
    # Where the task's webhook messages go and which events it wants (aitask_common.webhooks); stopped once the
    # receiver answered 410.
    webhook_url: NotRequired[str]
    webhook_events: NotRequired[list[str]]
    webhook_stopped: NotRequired[bool]
    # The vendor's own link to the output, and the copy in the output store (absent once retention removed it).
    upstream_url: NotRequired[str]
    output: NotRequired[OutputDocument]
    # What happened to the task, oldest first (aitask_common/timeline.py).
    timeline: NotRequired[list[dict[str, Any]]]
    # While an image's copy is pending (removed when the task completes).
    generated: NotRequired[GeneratedImage | None]
    # A priced task: the credits its create reserved and the price it is settled at (aitask_common/prices.py),
    # and, until the ledger has its settle or refund, billing_open.
    billing: NotRequired[BillingDocument]
    billing_open: NotRequired[bool]
    # From its create until it turns final.
    in_flight: NotRequired[bool]
    # Once final, for a task that may have had a final webhook: final_buckets(updated).
    final_buckets: NotRequired[list[str]]
    # A cancelled task: the status it was cancelled in (a processing one had reached the vendor).
    cancelled_from: NotRequired[str]


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision BSON stores."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def task_to_proto(document: TaskDocument, include_payload: bool = True) -> task_service_pb2.Task:
    """Render a stored task as the public message (base64 payloads only when asked)."""
    # A parameter stored as null is left unset.
    parameters: dict[str, Any] = {
        key: value for key, value in document.get("parameters", {}).items() if value is not None
    }
    usage = document.get("usage")
    task = task_service_pb2.Task(
        task_id=document["_id"],
        type=document["type"],
        status=document["status"],
        user_id=document.get("user_id", ""),
        provider=document.get("provider", ""),
        model=document.get("model", ""),
        prompt=document.get("prompt", ""),
        image_url=document.get("image_url", ""),
        image_base64=document.get("image_base64", "") if include_payload else "",
        video_url=document.get("video_url", ""),
        text_result=document.get("text_result", ""),
        revised_prompt=document.get("revised_prompt", ""),
        error_message=document.get("error_message", ""),
        attempts=document.get("attempts", 0),
        parameters=task_service_pb2.TaskParameters(**parameters),
        served_provider=document.get("served_provider", ""),
        served_model=document.get("served_model", ""),
        cancel_reason=document.get("cancel_reason", ""),
        webhook_url=document.get("webhook_url", ""),
        webhook_events=document.get("webhook_events", []),
        upstream_url=document.get("upstream_url", ""),
        allow_fallback=document.get("allow_fallback", False),
    )
    output = document.get("output")
    if output:
        task.output.size = output["size"]
        task.output.content_type = output["content_type"]
        task.output.sha256 = output["sha256"]
        task.output.stored.FromDatetime(output["stored"])
    if usage:
        task.usage.CopyFrom(task_service_pb2.TokenUsage(**usage))
    if "progress" in document and document["status"] == TaskStatus.PROCESSING:
        task.progress = document["progress"]
    task.created.FromDatetime(document["created"])
    task.updated.FromDatetime(document["updated"])
    if "deadline" in document:
        task.deadline.FromDatetime(document["deadline"])
    return task


def inflight_key(user_id: str) -> str:
    """Redis set of a user's task ids that are not final yet (for the per-user in-flight cap)."""
    return user_key("aitask:inflight:", user_id)


# Redis set of the users whose in-flight set may hold members: every create adds its user after reserving the slot,
# and the reconciler drops a user whose set it finds empty (atomically with the check). The reconciler reads its sets
# from here, not by a SCAN of the whole keyspace. A set from before this index is found at its user's next create,
# the only time its count matters.
INFLIGHT_USERS_KEY = "aitask:inflight-users"
