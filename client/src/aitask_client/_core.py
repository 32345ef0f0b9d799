"""What the sync and the asyncio clients share: where to connect, how to retry, and the create methods."""

from __future__ import annotations

import math
import os
import random
import ssl
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Generic, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

import grpc

from aitask_client._proto import task_service_pb2 as pb
from aitask_client.errors import AitaskError, DeadlineExceeded, InvalidArgument, RateLimited, Unavailable
from aitask_client.types import Model, Parameters, Task, TaskType, task_from_proto

try:
    VERSION = version("aitask-client")
except PackageNotFoundError:  # run from a source tree
    VERSION = "0.0.0"

# The longest wait one GetTaskResult may ask for; `wait` chains them for longer.
MAX_WAIT_SECONDS = 60
# List pages: the gateway's largest.
PAGE_SIZE = 100


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed call is tried again: UNAVAILABLE and timeouts with exponential backoff and full jitter,
    RESOURCE_EXHAUSTED after the `retry-after` the gateway sent (never sooner; not at all without one)."""

    attempts: int = 5
    initial_backoff: float = 0.25
    max_backoff: float = 8.0
    # A rate limit asking for a longer pause than this is raised rather than slept through.
    max_retry_after: float = 60.0

    def delay(self, attempt: int, error: AitaskError) -> float | None:
        """Seconds to sleep before trying again after failed attempt number `attempt` (1-based); None: give up."""
        if attempt >= self.attempts:
            return None
        if isinstance(error, RateLimited):
            if error.retry_after is None or error.retry_after > self.max_retry_after:
                return None
            return error.retry_after + random.uniform(0, self.initial_backoff)
        if isinstance(error, Unavailable | DeadlineExceeded):
            return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1)))
        return None


DEFAULT_RETRIES = RetryPolicy()
NO_RETRIES = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Endpoint:
    """The gateway's address: a gRPC target, whether it uses TLS, and the HTTP base of its relative links."""

    target: str
    secure: bool
    base_url: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`http://host:port` (plaintext), `https://host[:port]` (TLS) or a bare `host:port` (plaintext)."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gateway URL {url!r}: expected http://host:port or https://host[:port]")
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(f"{host}:{port}", secure, f"{parts.scheme}://{host}:{port}")


@dataclass(frozen=True)
class Connection:
    """Everything a client needs to reach the gateway, from arguments or the environment."""

    endpoint: Endpoint
    metadata: tuple[tuple[str, str], ...]
    user_id: str
    timeout: float
    retry: RetryPolicy
    # PEM certificates of the authorities to trust over https; None: the system's.
    root_certificates: bytes | None = None

    @classmethod
    def resolve(
        cls,
        url: str | None,
        api_key: str | None,
        user_id: str | None,
        timeout: float,
        retry: RetryPolicy,
        root_certificates: bytes | None = None,
    ) -> Connection:
        """Arguments win; else AITASK_URL, AITASK_API_KEY, AITASK_USER_ID and AITASK_CA_FILE (a PEM file of the
        authorities to trust, for a gateway whose certificate a private one signed). No key: no Authorization."""
        url = url or os.environ.get("AITASK_URL", "")
        if not url:
            raise ValueError("no gateway URL: pass url=... or set AITASK_URL (e.g. http://127.0.0.1:8080)")
        key = api_key if api_key is not None else os.environ.get("AITASK_API_KEY", "")
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        owner = user_id if user_id is not None else os.environ.get("AITASK_USER_ID", "")
        if root_certificates is None and os.environ.get("AITASK_CA_FILE"):
            root_certificates = Path(os.environ["AITASK_CA_FILE"]).read_bytes()
        return cls(Endpoint.parse(url), metadata, owner, timeout, retry, root_certificates)

    def open_channel(self, channels: Any) -> Any:
        """A channel made by `channels` (the grpc module, or grpc.aio): TLS when the URL is https. It carries our
        user agent and takes messages as large as a base64 image."""
        options = [("grpc.primary_user_agent", f"aitask-client/{VERSION}"), ("grpc.max_receive_message_length", -1)]
        if self.endpoint.secure:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
            return channels.secure_channel(self.endpoint.target, credentials, options)
        return channels.insecure_channel(self.endpoint.target, options)

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context of downloads: the same authorities as the channel's."""
        cadata = self.root_certificates.decode() if self.root_certificates else None
        return ssl.create_default_context(cadata=cadata)

    def absolute(self, link: str) -> str:
        """A link as a full URL (the gateway answers relative ones when it has no public URL configured)."""
        return f"{self.endpoint.base_url}{link}" if link.startswith("/") else link


def wait_slice(remaining: float | None) -> int:
    """How long the next GetTaskResult may wait, in whole seconds."""
    if remaining is None:
        return MAX_WAIT_SECONDS
    return max(0, min(MAX_WAIT_SECONDS, math.ceil(remaining)))


def catalogue_by_name(models: list[Model]) -> dict[str, list[Model]]:
    """The catalogue indexed by model name (two providers may serve one name)."""
    index: dict[str, list[Model]] = {}
    for model in models:
        index.setdefault(model.model, []).append(model)
    return index


def catalogue_entry(catalogue: dict[str, list[Model]], model: str, provider: str) -> Model:
    """The entry of `model` (of `provider`, when given); InvalidArgument naming what is wrong."""
    entries = [entry for entry in catalogue.get(model, []) if not provider or entry.provider == provider]
    if not entries:
        raise InvalidArgument(f"model: unknown model {model!r} (see models())", "INVALID_ARGUMENT", "model")
    if len(entries) > 1:
        names = ", ".join(entry.provider for entry in entries)
        raise InvalidArgument(f"provider: {model!r} is served by {names}; name one", "INVALID_ARGUMENT", "provider")
    return entries[0]


class Pager:
    """A paged list's state: the next page's request, following the gateway's page tokens."""

    def __init__(self, user_id: str, task_type: str, status: str, page_size: int) -> None:
        self.next = pb.ListTasksRequest(user_id=user_id, type=task_type, status=status, limit=page_size)

    def take(self, page: pb.TaskPage) -> tuple[list[Task], bool]:
        """The page's tasks, and whether another page follows."""
        self.next.page_token = page.next_page_token
        return [task_from_proto(message) for message in page.tasks], bool(page.next_page_token)


def task_id_of(task: Any) -> str:
    """The id of a Task or of a task id string."""
    return task if isinstance(task, str) else str(task.id)


R = TypeVar("R")


class CreateOptions(TypedDict, total=False):
    """What every create may also say (see the API's create requests)."""

    provider: str  # default: the catalogue's provider of `model`
    user_id: str  # default: the client's, else the API key's user
    priority: str  # "critical", "default" or "low"
    idempotency_key: str  # default: a fresh one per call, kept across its retries
    deadline_seconds: int | None  # cancel it if it has not started upstream by then
    wait_seconds: int | None  # answer once final, or after this many seconds (at most 60)
    webhook_url: str
    webhook_events: Iterable[str]  # "started", "progress", "final" (the default)
    allow_fallback: bool


PARAMETERS: dict[TaskType, tuple[str, ...]] = {
    "image": ("size", "seed", "response_format"),
    "video": ("aspect_ratio", "seed"),
    "text": ("max_tokens", "temperature"),
}
CREATE_REQUESTS: dict[TaskType, Any] = {
    "image": pb.CreateImageTaskRequest,
    "video": pb.CreateVideoTaskRequest,
    "text": pb.CreateTextTaskRequest,
}


def created_task(task_type: TaskType, request: Any, created: pb.TaskCreated) -> Task:
    """The Task a create answered with: the whole one when it waited, else made from the request (its parameters
    are those asked for; a read shows the defaults the gateway filled in)."""
    if created.HasField("task"):
        return task_from_proto(created.task)
    fields = request.DESCRIPTOR.fields_by_name
    asked = {
        name: getattr(request, name)
        for name in PARAMETERS[task_type]
        if not fields[name].has_presence or request.HasField(name)
    }
    return Task(
        id=created.task_id,
        type=task_type,
        status=created.status,
        user_id=request.user_id,
        provider=created.provider,
        model=created.model,
        prompt=request.prompt,
        webhook_url=request.webhook_url,
        webhook_events=tuple(request.webhook_events),
        allow_fallback=request.allow_fallback,
        parameters=Parameters(priority=request.priority, **asked),
    )


class Creates(Generic[R]):
    """The create methods, written once: the sync client's return Tasks, the asyncio client's awaitables."""

    def _create(self, task_type: TaskType, request: Any) -> R:
        raise NotImplementedError

    def _request(
        self, task_type: TaskType, prompt: str, model: str, fields: dict[str, Any], options: CreateOptions
    ) -> Any:
        """The create request; every create carries an idempotency key, so a retried one never makes a second task."""
        given = {name: value for name, value in (fields | dict(options)).items() if value is not None}
        given["idempotency_key"] = given.get("idempotency_key") or f"aitask-client-{uuid.uuid4()}"
        given["webhook_events"] = list(given.get("webhook_events", ()))
        return CREATE_REQUESTS[task_type](prompt=prompt, model=model, **given)

    def create_image(
        self,
        prompt: str,
        *,
        model: str,
        size: str = "",
        seed: int | None = None,
        response_format: str = "",
        **options: Unpack[CreateOptions],
    ) -> R:
        """Create a text-to-image task; returns it at once (or once final, within `wait_seconds`)."""
        fields = {"size": size, "seed": seed, "response_format": response_format}
        return self._create("image", self._request("image", prompt, model, fields, options))

    def create_video(
        self,
        prompt: str,
        *,
        model: str,
        aspect_ratio: str = "",
        seed: int | None = None,
        **options: Unpack[CreateOptions],
    ) -> R:
        """Create a text-to-video task; returns it at once (or once final, within `wait_seconds`)."""
        fields = {"aspect_ratio": aspect_ratio, "seed": seed}
        return self._create("video", self._request("video", prompt, model, fields, options))

    def create_text(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **options: Unpack[CreateOptions],
    ) -> R:
        """Create a text-generation task; returns it at once (or once final, within `wait_seconds`)."""
        fields = {"max_tokens": max_tokens, "temperature": temperature}
        return self._create("text", self._request("text", prompt, model, fields, options))
