"""The synchronous client: `Client(url, api_key)`, every call of the gateway's TaskService over native gRPC."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from aitask_client import _download
from aitask_client._core import (
    DEFAULT_RETRIES,
    PAGE_SIZE,
    Connection,
    Creates,
    Pager,
    RetryPolicy,
    catalogue_by_name,
    catalogue_entry,
    created_task,
    task_id_of,
    wait_slice,
)
from aitask_client._proto import task_service_pb2 as pb
from aitask_client._proto import task_service_pb2_grpc as pb_grpc
from aitask_client.errors import AitaskError, Conflict, NotFound, TaskFailed, WaitTimeout, from_rpc_error
from aitask_client.types import (
    Balance,
    Event,
    LedgerEntry,
    Model,
    Task,
    TaskType,
    WebhookSecret,
    balance_from_proto,
    entry_from_proto,
    model_from_proto,
    secret_from_proto,
    task_from_proto,
)

Response = TypeVar("Response")


class Client(Creates[Task]):
    """A connection to the gateway. `Client()` reads AITASK_URL, AITASK_API_KEY and AITASK_USER_ID.

    Every call raises an `AitaskError` subclass on failure; UNAVAILABLE, timeouts and rate limits that say when
    to come back are retried per `retry` (creates too: each carries an idempotency key).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        user_id: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRIES,
        root_certificates: bytes | None = None,
    ) -> None:
        self.connection = Connection.resolve(url, api_key, user_id, timeout, retry, root_certificates)
        self._channel = self.connection.open_channel(grpc)
        self._stub = pb_grpc.TaskServiceStub(self._channel)
        self._catalogue: dict[str, list[Model]] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()

    # --- calls ---------------------------------------------------------------
    def _call(self, method: Callable[..., Response], request: Any, timeout: float | None = None) -> Response:
        """One unary call, retried per the policy; errors raised as AitaskError (`retried` set after a retry)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=timeout or self.connection.timeout, metadata=self.connection.metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                error.retried = attempt > 1
                delay = self.connection.retry.delay(attempt, error)
                if delay is None:
                    raise error from None
                time.sleep(delay)

    def _create(self, task_type: TaskType, request: Any) -> Task:
        request.user_id = request.user_id or self.connection.user_id
        request.provider = request.provider or self._entry(request.model, "").provider
        method = {"image": self._stub.CreateImageTask, "video": self._stub.CreateVideoTask}.get(
            task_type, self._stub.CreateTextTask
        )
        wait = request.wait_seconds if request.HasField("wait_seconds") else 0
        created = self._call(method, request, timeout=self.connection.timeout + wait).data
        return created_task(task_type, request, created)

    def get(self, task: Task | str, *, wait_seconds: int | None = None) -> Task:
        """The task as it stands now (or once final, within `wait_seconds`, at most 60)."""
        request = pb.GetTaskResultRequest(task_id=task_id_of(task), wait_seconds=wait_seconds)
        timeout = self.connection.timeout + (wait_seconds or 0)
        return task_from_proto(self._call(self._stub.GetTaskResult, request, timeout).data)

    def list(
        self, *, type: str = "", status: str = "", user_id: str = "", page_size: int = PAGE_SIZE
    ) -> Iterator[Task]:
        """Every task of the user (of a type, in a status), newest first, fetched a page at a time."""
        pager = Pager(user_id or self.connection.user_id, type, status, page_size)
        while True:
            tasks, more = pager.take(self._call(self._stub.ListTasks, pager.next).data)
            yield from tasks
            if not more:
                return

    def delete(self, task: Task | str) -> None:
        """Delete the task and everything stored for it."""
        try:
            self._call(self._stub.DeleteTask, pb.DeleteTaskRequest(task_id=task_id_of(task)))
        except NotFound as error:
            if not error.retried:  # else our first attempt deleted it and its answer was lost
                raise

    def cancel(self, task: Task | str) -> Task:
        """Cancel a task that is not final; returns it cancelled."""
        try:
            return task_from_proto(
                self._call(self._stub.CancelTask, pb.CancelTaskRequest(task_id=task_id_of(task))).data
            )
        except Conflict as error:
            current = self.get(task) if error.retried else None
            if current is not None and current.status == "cancelled":
                return current
            raise

    def models(self, type: str = "") -> builtins.list[Model]:
        """The live catalogue, optionally of one type (image, video, text)."""
        listed = self._call(self._stub.ListModels, pb.ListModelsRequest(type=type)).data.models
        models = [model_from_proto(message) for message in listed]
        if not type:
            self._catalogue = catalogue_by_name(models)
        return models

    def wait(self, task: Task | str, timeout: float | None = None) -> Task:
        """The task once final, waiting on the gateway (no polling); WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            current = self.get(task, wait_seconds=wait_slice(remaining))
            if current.done:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(current, timeout or 0)

    def run(self, model: str, prompt: str, *, timeout: float | None = None, **options: Any) -> Task:
        """Create a task on `model` and wait for it, like `replicate.run`; TaskFailed if it fails or is cancelled."""
        create = getattr(self, f"create_{self._entry(model, options.get('provider', '')).type}")
        task = self.wait(create(prompt, model=model, **options), timeout)
        if task.status != "completed":
            raise TaskFailed(task)
        return task

    def _entry(self, model: str, provider: str) -> Model:
        """The catalogue's entry for a model (read once, again when the model is not in it)."""
        if model not in self._catalogue:
            self.models()
        return catalogue_entry(self._catalogue, model, provider)

    def watch(self, task: Task | str) -> Iterator[Event]:
        """The task's events as they happen: its state first, then each change, `final` last.

        A stream cut before `final` is reopened (the gateway starts it again with the current state).
        """
        request = pb.WatchTaskRequest(task_id=task_id_of(task))
        attempt = 0
        while True:
            attempt += 1
            try:
                for message in self._stub.WatchTask(request, metadata=self.connection.metadata):
                    if not message.success:
                        raise NotFound(message.message, message.code or "NOT_FOUND")
                    attempt = 0
                    yield Event(message.event, task_from_proto(message.task))
                    if message.event == "final":
                        return
                return
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                delay = self.connection.retry.delay(max(attempt, 1), error)
                if delay is None:
                    raise error from None
                time.sleep(delay)

    def download(self, task: Task | str, path: str | os.PathLike[str]) -> Path:
        """Stream the task's output (image, video, or text) to `path` or into it when it is a directory."""
        current = task if isinstance(task, Task) and task.done else self.get(task)
        try:
            return _download.download(current, path, self.connection)
        except AitaskError as error:
            if error.code not in ("HTTP_403", "HTTP_410") or current is not task:
                raise
        # The link we were given had expired: the gateway signs a fresh one on every read.
        fresh = self.get(task)
        return _download.download(fresh, path, self.connection)

    # --- credits --------------------------------------------------------------
    def balance(self, user_id: str = "") -> Balance:
        """The user's credits: balance, reserved by running tasks, available."""
        request = pb.GetBalanceRequest(user_id=user_id or self.connection.user_id)
        return balance_from_proto(self._call(self._stub.GetBalance, request).data)

    def ledger(self, user_id: str = "", *, limit: int = 20, offset: int = 0) -> builtins.list[LedgerEntry]:
        """The user's ledger entries, newest first."""
        request = pb.ListLedgerEntriesRequest(user_id=user_id or self.connection.user_id, limit=limit, offset=offset)
        return [entry_from_proto(entry) for entry in self._call(self._stub.ListLedgerEntries, request).data.entries]

    # --- webhooks -------------------------------------------------------------
    def webhook_secret(self, user_id: str = "") -> WebhookSecret:
        """The user's webhook signing secret (`whsec_…`), made on first use."""
        request = pb.GetWebhookSecretRequest(user_id=user_id or self.connection.user_id)
        return secret_from_proto(self._call(self._stub.GetWebhookSecret, request).data)

    def rotate_webhook_secret(self, user_id: str = "") -> WebhookSecret:
        """A new signing secret; the previous one keeps signing beside it for 24 hours."""
        request = pb.RotateWebhookSecretRequest(user_id=user_id or self.connection.user_id)
        return secret_from_proto(self._call(self._stub.RotateWebhookSecret, request).data)
