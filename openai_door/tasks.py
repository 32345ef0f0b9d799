"""The door's side of the task service: gRPC calls carrying the caller's key, waits longer than one call's,
and the catalogue that turns an OpenAI model name into aitask's provider and model."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common.tasks import TaskStatus
from openai_door.errors import OpenAIError, bad_request, from_rpc_error, model_not_found
from openai_door.settings import TASK_SERVICE_MAX_WAIT_SECONDS

# Room a call has beyond the wait it asks for (the task service's own work, a queue ahead of it).
CALL_MARGIN_SECONDS = 15.0
# Deadline of calls that do not wait.
CALL_SECONDS = 15.0
# How long a catalogue read serves model lookups (the task service refreshes its own every 2 s).
CATALOGUE_SECONDS = 2.0

Metadata = tuple[tuple[str, str], ...]
ResponseT = TypeVar("ResponseT")


@dataclass(frozen=True)
class Caller:
    """What one HTTP request hands on to the task service: its key, and whom it acts for."""

    metadata: Metadata
    user_id: str


async def call(rpc: Callable[..., Awaitable[ResponseT]], request: Any, caller: Caller, timeout: float) -> ResponseT:
    """One RPC with the caller's metadata; its failure as OpenAI would answer it."""
    try:
        return await rpc(request, metadata=caller.metadata, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None


class TaskClient:
    """The task service over one round-robin channel."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(
            target, options=[("grpc.lb_policy_name", "round_robin"), ("grpc.max_receive_message_length", 64 << 20)]
        )
        self.stub = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self._catalogue: tuple[float, list[pb.CatalogueModel]] | None = None

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def models(self, caller: Caller, *, fresh: bool = False) -> list[pb.CatalogueModel]:
        """The live catalogue (ListModels), read again when older than CATALOGUE_SECONDS or when `fresh`."""
        now = time.monotonic()
        if fresh or self._catalogue is None or now - self._catalogue[0] > CATALOGUE_SECONDS:
            response = await call(self.stub.ListModels, pb.ListModelsRequest(), caller, CALL_SECONDS)
            self._catalogue = (now, list(response.data.models))
        return self._catalogue[1]

    async def find_model(self, caller: Caller, name: str, task_type: str) -> pb.CatalogueModel:
        """The catalogue entry of an OpenAI `model` (a model name, or `provider/model`) of `task_type`."""
        if not name:
            raise bad_request("you must provide a model parameter", "model")
        provider, _, model = name.rpartition("/")

        def matching(models: list[pb.CatalogueModel]) -> list[pb.CatalogueModel]:
            return [entry for entry in models if entry.model == model and (not provider or entry.provider == provider)]

        matches = matching(await self.models(caller))
        if len(matches) > 1:
            # A provider with no live instance left (stopped, or gone) does not make a name ambiguous.
            matches = matching(await self.models(caller, fresh=True))
            matches = [entry for entry in matches if entry.live_instances] or matches
        if not matches:
            raise model_not_found(name)
        if len(matches) > 1:
            names = ", ".join(f"{entry.provider}/{entry.model}" for entry in matches)
            raise bad_request(f"model: '{name}' is served by more than one provider; name one of {names}", "model")
        entry = matches[0]
        if entry.type != task_type:
            raise bad_request(f"model: '{name}' is a {entry.type} model, not a {task_type} model", "model")
        return entry

    async def run(
        self,
        create: Callable[..., Awaitable[Any]],
        request: Any,
        caller: Caller,
        wait_seconds: float,
    ) -> pb.Task:
        """Create a task and wait for it to be final, up to `wait_seconds` in all (several waits of at most a
        minute, the task service's bound); past that, a timeout error naming the task, which goes on."""
        deadline = time.monotonic() + wait_seconds
        request.wait_seconds = _next_wait(deadline)
        response = await call(create, request, caller, request.wait_seconds + CALL_MARGIN_SECONDS)
        created: pb.TaskCreated = response.data
        task = created.task if created.HasField("task") else None
        while task is None or not TaskStatus(task.status).is_final:
            wait = _next_wait(deadline)
            if wait <= 0:
                raise still_running(created.task_id, wait_seconds)
            task = await self.get(created.task_id, caller, wait)
        return task

    async def get(self, task_id: str, caller: Caller, wait_seconds: int = 0) -> pb.Task:
        """The task (after waiting up to `wait_seconds` for it to be final)."""
        request = pb.GetTaskResultRequest(task_id=task_id)
        if wait_seconds:
            request.wait_seconds = wait_seconds
        response = await call(self.stub.GetTaskResult, request, caller, wait_seconds + CALL_MARGIN_SECONDS)
        task: pb.Task = response.data
        return task


def _next_wait(deadline: float) -> int:
    """Whole seconds the next call may wait: what is left, at most the task service's bound."""
    return max(0, min(TASK_SERVICE_MAX_WAIT_SECONDS, int(deadline - time.monotonic())))


def still_running(task_id: str, waited: float) -> OpenAIError:
    """The answer once the door has waited as long as it may: the task is not lost, and this says where it is."""
    return OpenAIError(
        504,
        f"task {task_id} is not finished after {waited:g} s; it goes on: read it at "
        f"GET /api/v1/ai/task/result/{task_id}",
        error_type="timeout",
        code="timeout",
        extra={"task_id": task_id},
        # The SDK's retry would reach the same task (same idempotency key) and wait again: let it.
        headers={"x-aitask-task-id": task_id},
    )
