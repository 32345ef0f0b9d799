"""AdminService: the queues (their state, pause and resume), the tasks of every user (search, timeline, retry),
the provider instances (state, drain), the API keys, and the audit log of every admin action.

Admin keys call every method, viewer keys only the reads (PERMISSION_DENIED otherwise), user keys none. Each
action that changes something is written to the audit log (who, what, when, from where) before it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final, TypeVar, cast

import grpc
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis import Redis
from redis.exceptions import RedisError
from ulid import ULID

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common import timeline
from aitask_common.logging import get_logger
from aitask_common.queue_shards import shared
from aitask_common.queue_state import AGE_SAMPLE_JOBS, OLDEST_AGE, PAUSED_QUEUES_KEY, paused_queues, priority_status
from aitask_common.queues import QUEUE_ORDER
from aitask_common.registry import DRAINING_KEY
from aitask_common.tasks import TaskDocument, TaskStatus, task_filter, task_to_proto, utcnow
from aitask_common.webhooks import MESSAGES_COLLECTION
from task_service.api_keys import ApiKey, ApiKeyStore, Role
from task_service.auth import current_principal, metadata_value
from task_service.paging import parse_instant, validated_filters
from task_service.provider_states import provider_states
from task_service.servicer import TaskServicer
from task_service.validation import InvalidRequest, validate_user_id

log = get_logger(__name__)
T = TypeVar("T")

AUDIT_COLLECTION: Final = "audit_log"
AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX = 20, 100
PRIORITIES: Final = [str(name) for name in QUEUE_ORDER]
KEY_NAME_MAX_CHARS: Final = 200


class AdminServicer(task_service_pb2_grpc.AdminServiceServicer):
    """The operator's API, served by each task service beside the TaskService."""

    def __init__(
        self, redis: Redis, audit: AsyncCollection[dict[str, Any]], tasks: TaskServicer, keys: ApiKeyStore
    ) -> None:
        self.redis = redis
        self.audit = audit
        self.keys = keys
        # The TaskService: the admin's task calls read, list and create tasks exactly as it does.
        self.tasks = tasks

    async def GetCaller(self, request: pb.GetCallerRequest, context: grpc.aio.ServicerContext) -> pb.GetCallerResponse:
        await _require(context, write=False)
        principal = current_principal()
        caller = pb.Caller(key_id=principal.key_id, user_id=principal.user_id, role=principal.role.value)
        return pb.GetCallerResponse(success=True, data=caller, message="ok")

    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQueuesResponse:
        await _require(context, write=False)
        states = await _redis(context, asyncio.to_thread(self._queue_states))
        return pb.ListQueuesResponse(success=True, data=states, message=f"{len(states)} queues")

    async def PauseQueue(
        self, request: pb.PauseQueueRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseQueueResponse:
        state = await self._set_paused(context, request.priority, paused=True)
        return pb.PauseQueueResponse(success=True, data=state, message=f"queue {state.priority} paused")

    async def ResumeQueue(
        self, request: pb.ResumeQueueRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeQueueResponse:
        state = await self._set_paused(context, request.priority, paused=False)
        return pb.ResumeQueueResponse(success=True, data=state, message=f"queue {state.priority} resumed")

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        await _require(context, write=False)
        if not 0 <= request.limit <= AUDIT_PAGE_MAX:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"limit: must be between 0 and {AUDIT_PAGE_MAX} (0 means 20)"
            )
        if request.offset < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "offset: must not be negative")
        # Ids are ULIDs: newest first is descending id order.
        cursor = self.audit.find({}).sort("_id", -1).skip(request.offset).limit(request.limit or AUDIT_PAGE_DEFAULT)
        try:
            entries = [_entry_to_proto(document) async for document in cursor]
        except PyMongoError as error:
            log.error("audit log unavailable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "audit log unavailable, retry later")
        return pb.ListAuditEntriesResponse(success=True, data=entries, message=f"{len(entries)} entries")

    async def SearchTasks(
        self, request: pb.SearchTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        await _require(context, write=False)
        try:
            filters = validated_filters(
                task_id=request.task_id,
                user_id=request.user_id,
                status=request.status,
                task_type=request.type,
                provider=request.provider,
                model=request.model,
                created_after=parse_instant("created_after", request.created_after),
                created_before=parse_instant("created_before", request.created_before),
            )
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        page = await self.tasks.page(filters, request.limit, 0, request.page_token, context)
        return pb.ListTasksResponse(success=True, data=page, message=f"{len(page.tasks)} tasks")

    async def GetTaskTimeline(
        self, request: pb.GetTaskTimelineRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskTimelineResponse:
        await _require(context, write=False)
        document = await self._task(request.task_id, context)
        events = await self.tasks.database_call(context, self._events(document))
        timeline = pb.TaskTimeline(task=self.tasks.links.sign(task_to_proto(document)), events=events)
        return pb.GetTaskTimelineResponse(success=True, data=timeline, message=f"{len(events)} events")

    async def RetryTask(self, request: pb.RetryTaskRequest, context: grpc.aio.ServicerContext) -> pb.RetryTaskResponse:
        await _require(context, write=True)
        document = await self._task(request.task_id, context)
        if document["status"] != TaskStatus.FAILED:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {request.task_id!r} is {document['status']}: only a failed task can be retried",
            )
        await self._record(context, "RetryTask", f"task {request.task_id}")
        created = await self.tasks.recreate(document, context)
        entry = timeline.entry("retried_as", task_id=created.task_id, by=current_principal().key_id)
        try:
            await self.tasks.store.collection.update_one(
                task_filter(request.task_id, document["user_id"]), {"$push": {timeline.FIELD: entry}}
            )
        except PyMongoError as error:  # the new task runs; only the old one's pointer to it is missing
            log.warning("retry not noted on the failed task", error=str(error))
        return pb.RetryTaskResponse(success=True, data=created, message=f"task retried as {created.task_id}")

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProvidersResponse:
        await _require(context, write=False)
        states = await _redis(context, provider_states(self.redis))
        return pb.ListProvidersResponse(success=True, data=states, message=f"{len(states)} instances")

    async def DrainProvider(
        self, request: pb.DrainProviderRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainProviderResponse:
        state = await self._set_draining(context, request.instance_id, draining=True)
        return pb.DrainProviderResponse(success=True, data=state, message=f"instance {state.instance_id} drained")

    async def UndrainProvider(
        self, request: pb.DrainProviderRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainProviderResponse:
        state = await self._set_draining(context, request.instance_id, draining=False)
        return pb.DrainProviderResponse(success=True, data=state, message=f"instance {state.instance_id} undrained")

    async def _set_draining(
        self, context: grpc.aio.ServicerContext, instance_id: str, draining: bool
    ) -> pb.ProviderInstanceState:
        await _require(context, write=True)
        states = await _redis(context, provider_states(self.redis, instance_id)) if instance_id else []
        if not states:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no live provider instance {instance_id!r}")
        await self._record(context, "DrainProvider" if draining else "UndrainProvider", f"instance {instance_id}")
        change = self.redis.sadd if draining else self.redis.srem
        await _redis(context, asyncio.to_thread(change, shared(DRAINING_KEY), instance_id))
        log.warning("provider instance drained" if draining else "provider instance undrained", instance=instance_id)
        (state,) = states
        state.draining = draining
        return state

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        await _require(context, write=False)
        keys = await self.tasks.database_call(context, self.keys.list())
        return pb.ListApiKeysResponse(
            success=True, data=[_key_to_proto(key) for key in keys], message=f"{len(keys)} keys"
        )

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        await _require(context, write=True)
        try:
            user_id = validate_user_id(request.user_id)
            if request.role and request.role not in Role.__members__.values():
                raise InvalidRequest("role", f"must be one of {', '.join(Role)} (got {request.role!r})")
            if len(request.name) > KEY_NAME_MAX_CHARS or not request.name.isprintable():
                raise InvalidRequest("name", f"must be at most {KEY_NAME_MAX_CHARS} printable characters")
            if request.HasField("rate_limit") and request.rate_limit < 0:
                raise InvalidRequest("rate_limit", "must not be negative (0: no limit)")
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        role = Role(request.role or Role.USER)
        await self._record(context, "CreateApiKey", f"{role} key for user {user_id}")
        rate_limit = request.rate_limit if request.HasField("rate_limit") else None
        key, whole = await self.tasks.database_call(context, self.keys.create(user_id, role, request.name, rate_limit))
        created = pb.CreatedApiKey(key=_key_to_proto(key), api_key=whole)
        return pb.CreateApiKeyResponse(success=True, data=created, message="store the key now: it is not shown again")

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        await _require(context, write=True)
        if await self.tasks.database_call(context, self.keys.get(request.key_id)) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no API key {request.key_id!r}")
        await self._record(context, "RevokeApiKey", f"key {request.key_id}")
        revoked_now = await self.tasks.database_call(context, self.keys.revoke(request.key_id))
        key = await self.tasks.database_call(context, self.keys.get(request.key_id))
        assert key is not None  # keys are revoked, never deleted
        message = "key revoked" if revoked_now else "key was revoked already"
        return pb.RevokeApiKeyResponse(success=True, data=_key_to_proto(key), message=message)

    async def _task(self, task_id: str, context: grpc.aio.ServicerContext) -> TaskDocument:
        document = await self.tasks.database_call(context, self.tasks.store.get(task_id, None))
        if document is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id!r} not found")
            raise AssertionError("unreachable: abort raises")
        return document

    async def _events(self, document: TaskDocument) -> list[pb.TimelineEvent]:
        """The task's stored timeline, its holds, its webhook attempts and its ledger entries, oldest first."""
        entries: list[dict[str, Any]] = list(document.get("timeline", []))
        if held := timeline.held_entry(document):
            entries.append(held)
        messages = self.tasks.store.collection.database.get_collection(MESSAGES_COLLECTION)
        async for message in cast(AsyncCollection[dict[str, Any]], messages).find({"task_id": document["_id"]}):
            for attempt in message["attempts"]:
                detail = {key: attempt[key] for key in ("status_code", "error", "latency_ms") if attempt.get(key)}
                entries.append({"at": attempt["at"], "event": "webhook_attempt", "webhook_event": message["event"]})
                entries[-1] |= detail
        for line in await asyncio.to_thread(
            self.tasks.billing.ledger.task_entries, document["user_id"], document["_id"]
        ):
            entries.append(
                {"at": line.time, "event": f"credit_{line.reason.value}", "amount": line.amount, "held": line.held}
            )
        entries.sort(key=lambda entry: entry["at"])
        return [_event_to_proto(entry) for entry in entries]

    async def _set_paused(self, context: grpc.aio.ServicerContext, priority: str, paused: bool) -> pb.QueueState:
        await _require(context, write=True)
        if priority not in PRIORITIES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"priority: must be one of {', '.join(PRIORITIES)}, not {priority!r}"
            )
        await self._record(context, "PauseQueue" if paused else "ResumeQueue", f"queue {priority}")
        change = self.redis.sadd if paused else self.redis.srem
        await _redis(context, asyncio.to_thread(change, PAUSED_QUEUES_KEY, priority))
        log.warning("queue paused" if paused else "queue resumed", queue=priority)
        (state,) = [
            state
            for state in await _redis(context, asyncio.to_thread(self._queue_states))
            if state.priority == priority
        ]
        return state

    async def _record(self, context: grpc.aio.ServicerContext, action: str, target: str) -> None:
        """Write the action to the audit log before doing it: an action the log cannot hold is refused."""
        principal = current_principal()
        entry = {
            "_id": str(ULID()),
            "time": utcnow(),
            "key_id": principal.key_id,
            "user_id": principal.user_id,
            "action": action,
            "target": target,
            "source": _source(context),
        }
        try:
            await self.audit.insert_one(entry)
        except PyMongoError as error:
            log.error("audit log unavailable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "audit log unavailable, retry later")

    def _queue_states(self) -> list[pb.QueueState]:
        paused = paused_queues(self.redis)
        states = []
        for name in PRIORITIES:
            counts = priority_status(self.redis, name, AGE_SAMPLE_JOBS)
            states.append(
                pb.QueueState(
                    priority=name,
                    queued=counts["queued"],
                    started=counts["started"],
                    scheduled=counts["scheduled"],
                    failed=counts["failed"],
                    oldest_age_seconds=counts[OLDEST_AGE] or 0.0,
                    paused=name in paused,
                    finished_last_hour=counts["finished"],
                )
            )
        return states


async def _require(context: grpc.aio.ServicerContext, write: bool) -> None:
    role = current_principal().role
    if role is Role.ADMIN or (role is Role.VIEWER and not write):
        return
    needed = "an admin key" if write else "an admin or viewer key"
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this needs {needed}")


async def _redis(context: grpc.aio.ServicerContext, operation: Awaitable[T]) -> T:
    try:
        return await operation
    except RedisError as error:
        log.error("queues unavailable", error=str(error))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "queues unavailable, retry later")
        raise AssertionError("unreachable: abort raises") from error


def _source(context: grpc.aio.ServicerContext) -> str:
    """The client's address as Envoy saw it (the first x-forwarded-for hop), else the gRPC peer."""
    forwarded = metadata_value(context, "x-forwarded-for")
    return forwarded.split(",")[0].strip() if forwarded else context.peer() or ""


def _entry_to_proto(document: dict[str, Any]) -> pb.AuditEntry:
    entry = pb.AuditEntry(
        key_id=document["key_id"],
        user_id=document["user_id"],
        action=document["action"],
        target=document["target"],
        source=document["source"],
    )
    entry.time.FromDatetime(document["time"])
    return entry


def _event_to_proto(entry: dict[str, Any]) -> pb.TimelineEvent:
    event = pb.TimelineEvent(
        event=entry["event"],
        detail={key: str(value) for key, value in entry.items() if key not in ("at", "event")},
    )
    event.time.FromDatetime(entry["at"])
    return event


def _key_to_proto(key: ApiKey) -> pb.ApiKeyInfo:
    info = pb.ApiKeyInfo(key_id=key.key_id, user_id=key.user_id, role=key.role.value, name=key.name)
    info.created.FromDatetime(key.created)
    if key.revoked is not None:
        info.revoked.FromDatetime(key.revoked)
    if key.rate_limit is not None:
        info.rate_limit = key.rate_limit
    return info
