"""The asyncio client: `AsyncClient` has the sync client's methods under the same names, as coroutines."""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio

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


class AsyncClient(Creates[Awaitable[Task]]):
    """`Client` for asyncio: `async with AsyncClient() as client: task = await client.run(...)`."""

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
        self._channel = self.connection.open_channel(aio)
        self._stub = pb_grpc.TaskServiceStub(self._channel)
        self._catalogue: dict[str, list[Model]] = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        await self._channel.close()

    # --- calls ---------------------------------------------------------------
    async def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """One unary call, retried per the policy; errors raised as AitaskError (`retried` set after a retry)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(
                    request, timeout=timeout or self.connection.timeout, metadata=self.connection.metadata
                )
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                error.retried = attempt > 1
                delay = self.connection.retry.delay(attempt, error)
                if delay is None:
                    raise error from None
                await asyncio.sleep(delay)

    async def _create_async(self, task_type: TaskType, request: Any) -> Task:
        request.user_id = request.user_id or self.connection.user_id
        request.provider = request.provider or (await self._entry(request.model, "")).provider
        method = {"image": self._stub.CreateImageTask, "video": self._stub.CreateVideoTask}.get(
            task_type, self._stub.CreateTextTask
        )
        wait = request.wait_seconds if request.HasField("wait_seconds") else 0
        created = (await self._call(method, request, timeout=self.connection.timeout + wait)).data
        return created_task(task_type, request, created)

    def _create(self, task_type: TaskType, request: Any) -> Awaitable[Task]:
        return self._create_async(task_type, request)

    async def get(self, task: Task | str, *, wait_seconds: int | None = None) -> Task:
        """The task as it stands now (or once final, within `wait_seconds`, at most 60)."""
        request = pb.GetTaskResultRequest(task_id=task_id_of(task), wait_seconds=wait_seconds)
        timeout = self.connection.timeout + (wait_seconds or 0)
        return task_from_proto((await self._call(self._stub.GetTaskResult, request, timeout)).data)

    async def list(
        self, *, type: str = "", status: str = "", user_id: str = "", page_size: int = PAGE_SIZE
    ) -> AsyncIterator[Task]:
        """Every task of the user (of a type, in a status), newest first, fetched a page at a time."""
        pager = Pager(user_id or self.connection.user_id, type, status, page_size)
        while True:
            tasks, more = pager.take((await self._call(self._stub.ListTasks, pager.next)).data)
            for task in tasks:
                yield task
            if not more:
                return

    async def delete(self, task: Task | str) -> None:
        """Delete the task and everything stored for it."""
        try:
            await self._call(self._stub.DeleteTask, pb.DeleteTaskRequest(task_id=task_id_of(task)))
        except NotFound as error:
            if not error.retried:
                raise

    async def cancel(self, task: Task | str) -> Task:
        """Cancel a task that is not final; returns it cancelled."""
        try:
            cancelled = await self._call(self._stub.CancelTask, pb.CancelTaskRequest(task_id=task_id_of(task)))
            return task_from_proto(cancelled.data)
        except Conflict as error:
            current = await self.get(task) if error.retried else None
            if current is not None and current.status == "cancelled":
                return current
            raise

    async def models(self, type: str = "") -> builtins.list[Model]:
        """The live catalogue, optionally of one type (image, video, text)."""
        listed = (await self._call(self._stub.ListModels, pb.ListModelsRequest(type=type))).data.models
        models = [model_from_proto(message) for message in listed]
        if not type:
            self._catalogue = catalogue_by_name(models)
        return models

    async def wait(self, task: Task | str, timeout: float | None = None) -> Task:
        """The task once final, waiting on the gateway (no polling); WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            current = await self.get(task, wait_seconds=wait_slice(remaining))
            if current.done:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(current, timeout or 0)

    async def run(self, model: str, prompt: str, *, timeout: float | None = None, **options: Any) -> Task:
        """Create a task on `model` and wait for it; TaskFailed if it fails or is cancelled."""
        create = getattr(self, f"create_{(await self._entry(model, options.get('provider', ''))).type}")
        task = await self.wait(await create(prompt, model=model, **options), timeout)
        if task.status != "completed":
            raise TaskFailed(task)
        return task

    async def _entry(self, model: str, provider: str) -> Model:
        """The catalogue's entry for a model (read once, again when the model is not in it)."""
        if model not in self._catalogue:
            await self.models()
        return catalogue_entry(self._catalogue, model, provider)

    async def watch(self, task: Task | str) -> AsyncIterator[Event]:
        """The task's events as they happen: its state first, then each change, `final` last (reopened if cut)."""
        request = pb.WatchTaskRequest(task_id=task_id_of(task))
        attempt = 0
        while True:
            attempt += 1
            try:
                async for message in self._stub.WatchTask(request, metadata=self.connection.metadata):
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
                await asyncio.sleep(delay)

    async def download(self, task: Task | str, path: str | os.PathLike[str]) -> Path:
        """Stream the task's output (image, video, or text) to `path` or into it when it is a directory."""
        current = task if isinstance(task, Task) and task.done else await self.get(task)
        try:
            return await self._download(current, path)
        except AitaskError as error:
            if error.code not in ("HTTP_403", "HTTP_410") or current is not task:
                raise
        return await self._download(await self.get(task), path)

    async def _download(self, task: Task, path: str | os.PathLike[str]) -> Path:
        return await asyncio.to_thread(_download.download, task, path, self.connection)

    # --- credits --------------------------------------------------------------
    async def balance(self, user_id: str = "") -> Balance:
        """The user's credits: balance, reserved by running tasks, available."""
        request = pb.GetBalanceRequest(user_id=user_id or self.connection.user_id)
        return balance_from_proto((await self._call(self._stub.GetBalance, request)).data)

    async def ledger(self, user_id: str = "", *, limit: int = 20, offset: int = 0) -> builtins.list[LedgerEntry]:
        """The user's ledger entries, newest first."""
        request = pb.ListLedgerEntriesRequest(user_id=user_id or self.connection.user_id, limit=limit, offset=offset)
        return [
            entry_from_proto(entry) for entry in (await self._call(self._stub.ListLedgerEntries, request)).data.entries
        ]

    # --- webhooks -------------------------------------------------------------
    async def webhook_secret(self, user_id: str = "") -> WebhookSecret:
        """The user's webhook signing secret (`whsec_…`), made on first use."""
        request = pb.GetWebhookSecretRequest(user_id=user_id or self.connection.user_id)
        return secret_from_proto((await self._call(self._stub.GetWebhookSecret, request)).data)

    async def rotate_webhook_secret(self, user_id: str = "") -> WebhookSecret:
        """A new signing secret; the previous one keeps signing beside it for 24 hours."""
        request = pb.RotateWebhookSecretRequest(user_id=user_id or self.connection.user_id)
        return secret_from_proto((await self._call(self._stub.RotateWebhookSecret, request)).data)
