"""The TaskService RPC methods."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from pymongo.errors import PyMongoError
from redis import Redis
from redis.exceptions import RedisError
from ulid import ULID

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common.logging import get_logger
from aitask_common.metrics import TASKS_CREATED
from aitask_common.queues import enqueue_task
from aitask_common.tasks import TaskStatus, TaskType, task_to_proto, utcnow
from task_service.catalogue import CatalogueCache
from task_service.settings import TaskServiceSettings
from task_service.storage import TaskStore
from task_service.validation import InvalidRequest, validate_create, validate_user_id

log = get_logger(__name__)


class TaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    """Creates, reads, lists and deletes tasks."""

    def __init__(
        self, settings: TaskServiceSettings, store: TaskStore, queue_redis: Redis, catalogues: CatalogueCache
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue_redis = queue_redis
        self.catalogues = catalogues

    async def CreateImageTask(self, request: pb.CreateImageTaskRequest, context: Any) -> pb.CreateImageTaskResponse:
        created = await self._create(TaskType.IMAGE, request, context)
        return pb.CreateImageTaskResponse(success=True, data=created, message="image task created")

    async def CreateVideoTask(self, request: pb.CreateVideoTaskRequest, context: Any) -> pb.CreateVideoTaskResponse:
        created = await self._create(TaskType.VIDEO, request, context)
        return pb.CreateVideoTaskResponse(success=True, data=created, message="video task created")

    async def CreateTextTask(self, request: pb.CreateTextTaskRequest, context: Any) -> pb.CreateTextTaskResponse:
        created = await self._create(TaskType.TEXT, request, context)
        return pb.CreateTextTaskResponse(success=True, data=created, message="text task created")

    async def GetTaskResult(self, request: pb.GetTaskResultRequest, context: Any) -> pb.GetTaskResultResponse:
        document = await self._find(request.task_id, context)
        return pb.GetTaskResultResponse(success=True, data=task_to_proto(document), message="ok")

    async def DeleteTask(self, request: pb.DeleteTaskRequest, context: Any) -> pb.DeleteTaskResponse:
        await self._find(request.task_id, context)
        if not await self._database(context, self.store.delete(request.task_id)):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id!r} not found")
        log.info("task deleted", task_id=request.task_id)
        return pb.DeleteTaskResponse(
            success=True, data=pb.DeletedTask(task_id=request.task_id), message="task deleted"
        )

    async def ListTasks(self, request: pb.ListTasksRequest, context: Any) -> pb.ListTasksResponse:
        try:
            user_id = validate_user_id(request.user_id)
            if request.type and request.type not in TaskType.__members__.values():
                raise InvalidRequest("type", f"must be one of {', '.join(TaskType)} (got {request.type!r})")
            if request.limit < 0:
                raise InvalidRequest("limit", "must not be negative")
            if request.offset < 0:
                raise InvalidRequest("offset", "must not be negative")
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        limit = min(request.limit or self.settings.list_limit_default, self.settings.list_limit_max)
        documents = await self._database(
            context, self.store.list(user_id, request.type, limit, request.offset)
        )
        page = pb.TaskPage(
            tasks=[task_to_proto(document, include_payload=False) for document in documents],
            limit=limit,
            offset=request.offset,
        )
        return pb.ListTasksResponse(success=True, data=page, message="ok")

    async def _create(self, task_type: TaskType, request: Any, context: Any) -> pb.TaskCreated:
        try:
            catalogues = await self.catalogues.current(request.provider)
            valid = validate_create(task_type, request, catalogues, self.settings.max_prompt_chars)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except RedisError as error:
            log.error("registry unreachable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task registry unavailable, retry later")
        now = utcnow()
        task_id = str(ULID())
        document = {
            "_id": task_id,
            "type": task_type.value,
            "status": TaskStatus.PENDING.value,
            "user_id": valid.user_id,
            "provider": valid.provider,
            "model": valid.model,
            "prompt": valid.prompt,
            "parameters": valid.parameters,
            "attempts": 0,
            "created": now,
            "updated": now,
        }
        await self._database(context, self.store.insert(document))
        try:
            await asyncio.to_thread(enqueue_task, self.queue_redis, task_id, valid.parameters["priority"])
        except RedisError as error:
            # Undo the insert so a rejected create leaves nothing behind.
            log.error("enqueue failed; task withdrawn", task_id=task_id, error=str(error))
            await self._database(context, self.store.delete(task_id))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task queue unavailable, retry later")
        TASKS_CREATED.labels(valid.provider, valid.model, task_type.value).inc()
        log.info("task created", task_id=task_id, type=task_type.value, provider=valid.provider, model=valid.model)
        return pb.TaskCreated(task_id=task_id, status=TaskStatus.PENDING.value, provider=valid.provider,
                              model=valid.model)

    async def _find(self, task_id: str, context: Any) -> dict[str, Any]:
        if not task_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "task_id: is required")
        document = await self._database(context, self.store.get(task_id))
        if document is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id!r} not found")
        return document

    @staticmethod
    async def _database(context: Any, operation: Any) -> Any:
        """Await a storage call; an unreachable database is UNAVAILABLE, not an internal error."""
        try:
            return await operation
        except PyMongoError as error:
            log.error("database unavailable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task database unavailable, retry later")
