"""What calls return: plain frozen dataclasses made from the API's protos, so callers never touch protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp

from aitask_client._proto import task_service_pb2 as pb

TaskType = Literal["image", "video", "text"]
TASK_TYPES: tuple[TaskType, ...] = ("image", "video", "text")
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class Usage:
    """Tokens a text task used."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Output:
    """The copy of a task's image or video that the gateway stores and serves."""

    size: int
    content_type: str
    sha256: str
    stored: datetime | None


@dataclass(frozen=True)
class Parameters:
    """The generation parameters a task ran with, defaults filled in."""

    size: str = ""
    aspect_ratio: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    response_format: str = ""
    priority: str = ""


@dataclass(frozen=True)
class Task:
    """One generation task as the gateway reports it."""

    id: str
    type: str
    status: str
    user_id: str
    provider: str
    model: str
    prompt: str = ""
    created: datetime | None = None
    updated: datetime | None = None
    image_url: str = ""
    image_base64: str = ""
    video_url: str = ""
    text: str = ""
    revised_prompt: str = ""
    error: str = ""
    cancel_reason: str = ""
    attempts: int = 0
    queue_position: int | None = None
    progress: int | None = None
    served_provider: str = ""
    served_model: str = ""
    deadline: datetime | None = None
    webhook_url: str = ""
    webhook_events: tuple[str, ...] = ()
    allow_fallback: bool = False
    usage: Usage | None = None
    parameters: Parameters = Parameters()
    output: Output | None = None

    @property
    def done(self) -> bool:
        """Whether the task is final: completed, failed or cancelled."""
        return self.status in FINAL_STATUSES

    @property
    def url(self) -> str:
        """Where its image or video can be read (a signed link to the gateway's copy when it keeps one)."""
        return self.video_url or self.image_url


@dataclass(frozen=True)
class Event:
    """One event of a watched task: `status`, `progress` or `final` (the last), with the task as it then was."""

    type: str
    task: Task


@dataclass(frozen=True)
class Model:
    """One entry of the live model catalogue."""

    provider: str
    model: str
    type: str
    available: bool
    live_instances: int
    asynchronous: bool = False
    sizes: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ()
    default_size: str = ""
    default_aspect_ratio: str = ""
    max_tokens_limit: int = 0
    accepts_seed: bool = False
    response_formats: tuple[str, ...] = ()
    max_prompt_chars: int = 0
    served_model: str = ""
    alternative: str = ""
    fallbacks: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class WebhookSecret:
    """A user's webhook signing secret, and the previous one while it still signs."""

    user_id: str
    secret: str
    created: datetime | None
    previous_secret: str = ""
    previous_expires: datetime | None = None


@dataclass(frozen=True)
class Balance:
    """A user's credits: `balance` owned, `reserved` held by running tasks, `available` = the difference."""

    user_id: str
    balance: int
    reserved: int
    available: int


@dataclass(frozen=True)
class LedgerEntry:
    """One line of a user's ledger: `amount` changes the balance, `held` the credits reserved."""

    seq: int
    reason: str
    task_id: str
    amount: int
    held: int
    balance_after: int
    reserved_after: int
    time: datetime | None
    model: str = ""
    note: str = ""


def _time(message: pb.Task | pb.TaskOutput | pb.WebhookSecret | pb.LedgerEntry, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def task_from_proto(message: pb.Task) -> Task:
    """A Task from the API's message."""
    parameters = message.parameters
    return Task(
        id=message.task_id,
        type=message.type,
        status=message.status,
        user_id=message.user_id,
        provider=message.provider,
        model=message.model,
        prompt=message.prompt,
        created=_time(message, "created"),
        updated=_time(message, "updated"),
        image_url=message.image_url,
        image_base64=message.image_base64,
        video_url=message.video_url,
        text=message.text_result,
        revised_prompt=message.revised_prompt,
        error=message.error_message,
        cancel_reason=message.cancel_reason,
        attempts=message.attempts,
        queue_position=message.queue_position if message.HasField("queue_position") else None,
        progress=message.progress if message.HasField("progress") else None,
        served_provider=message.served_provider,
        served_model=message.served_model,
        deadline=_time(message, "deadline"),
        webhook_url=message.webhook_url,
        webhook_events=tuple(message.webhook_events),
        allow_fallback=message.allow_fallback,
        usage=Usage(message.usage.prompt_tokens, message.usage.completion_tokens, message.usage.total_tokens)
        if message.HasField("usage")
        else None,
        parameters=Parameters(
            size=parameters.size,
            aspect_ratio=parameters.aspect_ratio,
            max_tokens=parameters.max_tokens if parameters.HasField("max_tokens") else None,
            temperature=parameters.temperature if parameters.HasField("temperature") else None,
            seed=parameters.seed if parameters.HasField("seed") else None,
            response_format=parameters.response_format,
            priority=parameters.priority,
        ),
        output=Output(
            message.output.size, message.output.content_type, message.output.sha256, _time(message.output, "stored")
        )
        if message.HasField("output")
        else None,
    )


def model_from_proto(message: pb.CatalogueModel) -> Model:
    """A Model from the catalogue's message."""
    return Model(
        provider=message.provider,
        model=message.model,
        type=message.type,
        available=message.available,
        live_instances=message.live_instances,
        asynchronous=message.asynchronous,
        sizes=tuple(message.sizes),
        aspect_ratios=tuple(message.aspect_ratios),
        default_size=message.default_size,
        default_aspect_ratio=message.default_aspect_ratio,
        max_tokens_limit=message.max_tokens_limit,
        accepts_seed=message.accepts_seed,
        response_formats=tuple(message.response_formats),
        max_prompt_chars=message.max_prompt_chars,
        served_model=message.served_model,
        alternative=message.alternative,
        fallbacks=tuple(message.fallbacks),
        note=message.note,
    )


def secret_from_proto(message: pb.WebhookSecret) -> WebhookSecret:
    """A WebhookSecret from the API's message."""
    return WebhookSecret(
        user_id=message.user_id,
        secret=message.secret,
        created=_time(message, "created"),
        previous_secret=message.previous_secret,
        previous_expires=_time(message, "previous_expires"),
    )


def balance_from_proto(message: pb.Balance) -> Balance:
    """A Balance from the API's message."""
    return Balance(message.user_id, message.balance, message.reserved, message.available)


def entry_from_proto(message: pb.LedgerEntry) -> LedgerEntry:
    """A LedgerEntry from the API's message."""
    return LedgerEntry(
        seq=message.seq,
        reason=message.reason,
        task_id=message.task_id,
        amount=message.amount,
        held=message.held,
        balance_after=message.balance_after,
        reserved_after=message.reserved_after,
        time=_time(message, "time"),
        model=message.model,
        note=message.note,
    )
