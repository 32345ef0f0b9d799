"""The task service's side of webhooks: a create's webhook_url and webhook_events, the signing secret's reads and
rotations, and a task's delivery log (aitask_common.webhooks says how messages are made and sent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis as AsyncRedis

from aitask.v1 import task_service_pb2 as pb
from aitask_common.events import EventKind
from aitask_common.settings import Environment
from aitask_common.tasks import TaskDocument
from aitask_common.webhook_addresses import AddressRefused, allowed_addresses
from aitask_common.webhook_settings import WebhookSettings
from aitask_common.webhook_signing import UserSecrets, WebhookSecretStore, cipher
from aitask_common.webhooks import (
    DEFAULT_EVENTS,
    MESSAGES_COLLECTION,
    MessageDocument,
    WebhookEvent,
    final_message_id,
    subscribed_event,
)
from task_service.storage import TaskStore
from task_service.validation import InvalidRequest

URL_MAX_CHARS: Final = 2048
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class WebhookRequest:
    """A create's webhook, checked: where to send and which events."""

    url: str
    events: list[str]


async def check_webhook(request: Any, settings: WebhookSettings) -> WebhookRequest | None:
    """A create's webhook fields, checked (the URL's host resolved, within the DNS timeout, off the event loop);
    None when it asks for no webhook. InvalidRequest names the field at fault."""
    url: str = request.webhook_url.strip()
    requested = list(request.webhook_events)
    if not url:
        if requested:
            raise InvalidRequest("webhook_events", "needs a webhook_url")
        return None
    events = _events(requested)
    if len(url) > URL_MAX_CHARS:
        raise InvalidRequest("webhook_url", f"must be at most {URL_MAX_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidRequest("webhook_url", f"is not a valid URL ({error})") from error
    if parts.scheme not in DEFAULT_PORTS:
        raise InvalidRequest("webhook_url", "must be an http or https URL")
    host = parts.hostname
    if not host:
        raise InvalidRequest("webhook_url", "must name a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("webhook_url", "must not carry credentials")
    if (
        parts.scheme == "http"
        and settings.environment is Environment.PRODUCTION
        and host not in settings.webhook_http_hosts
    ):
        raise InvalidRequest("webhook_url", "must be https")
    try:
        await allowed_addresses(
            host,
            port or DEFAULT_PORTS[parts.scheme],
            settings.webhook_dns_timeout_seconds,
            settings.webhook_allow_private,
        )
    except AddressRefused as error:
        raise InvalidRequest("webhook_url", f"refused: {error}") from error
    return WebhookRequest(url, events)


def _events(requested: list[str]) -> list[str]:
    if not requested:
        return list(DEFAULT_EVENTS)
    known = [event.value for event in WebhookEvent]
    for event in requested:
        if event not in known:
            raise InvalidRequest("webhook_events", f"must be among {', '.join(known)} (got {event!r})")
    return [event for event in known if event in requested]


class WebhookReads:
    """Secrets and delivery logs, for the RPCs."""

    def __init__(self, settings: WebhookSettings, store: TaskStore, redis: AsyncRedis) -> None:
        database = store.collection.database
        self.secrets = WebhookSecretStore(database, cipher(settings), redis)
        self.messages: AsyncCollection[Any] = database[MESSAGES_COLLECTION]

    async def delivery_log(self, task: TaskDocument) -> pb.WebhookDeliveryLog:
        """Every message of a task, oldest first, with its attempts; a final message not stored yet (the task's
        final write holds it until its first attempt is recorded) is shown pending."""
        log = pb.WebhookDeliveryLog(task_id=task["_id"])
        stored: set[str] = set()
        async for message in self.messages.find({"task_id": task["_id"]}).sort([("created", 1), ("_id", 1)]):
            log.messages.append(message_to_proto(message))
            stored.add(message["_id"])
        if final_message_id(task["_id"]) not in stored and (message := final_message_due(task)) is not None:
            log.messages.append(message)
        return log


def message_to_proto(message: MessageDocument) -> pb.WebhookMessage:
    """A stored message as the delivery log shows it (without its body)."""
    rendered = pb.WebhookMessage(message_id=message["_id"], type=message["type"], state=message["state"])
    rendered.created.FromDatetime(message["created"])
    if message["state"] == "pending":
        rendered.next_attempt.FromDatetime(message["next_attempt_at"])
    for attempt in message["attempts"]:
        shown = rendered.attempts.add(
            status_code=attempt["status_code"],
            error=attempt["error"],
            latency_ms=attempt["latency_ms"],
            response_excerpt=attempt["response_excerpt"],
        )
        shown.time.FromDatetime(attempt["at"])
        if attempt["next_attempt_at"] is not None:
            shown.next_attempt.FromDatetime(attempt["next_attempt_at"])
    return rendered


def final_message_due(task: TaskDocument) -> pb.WebhookMessage | None:
    """The final message a task owes its webhook, pending since its final write, or None if it owes none."""
    event = subscribed_event(task, EventKind.FINAL)
    if event is None:
        return None
    message = pb.WebhookMessage(message_id=final_message_id(task["_id"]), type=event[1], state="pending")
    message.created.FromDatetime(task["updated"])
    message.next_attempt.FromDatetime(task["updated"])
    return message


def secret_to_proto(secrets: UserSecrets) -> pb.WebhookSecret:
    """A user's secrets as GetWebhookSecret answers them."""
    rendered = pb.WebhookSecret(user_id=secrets.user_id, secret=secrets.current)
    rendered.created.FromDatetime(secrets.created)
    if secrets.previous is not None and secrets.previous_expires is not None:
        rendered.previous_secret = secrets.previous
        rendered.previous_expires.FromDatetime(secrets.previous_expires)
    return rendered
