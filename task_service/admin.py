"""AdminService: the queues (their state, pause and resume) and the audit log of every admin action.

Admin keys call every method, viewer keys only the reads (PERMISSION_DENIED otherwise), user keys none. Each
action that changes something is written to the audit log (who, what, when, from where) before it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

import grpc
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis import Redis
from redis.exceptions import RedisError
from ulid import ULID

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common.logging import get_logger
from aitask_common.queue_state import AGE_SAMPLE_JOBS, OLDEST_AGE, PAUSED_QUEUES_KEY, paused_queues, queue_status
from aitask_common.queues import QUEUE_ORDER
from aitask_common.tasks import utcnow
from task_service.api_keys import Role
from task_service.auth import current_principal, metadata_value
from task_service.enqueue import queue

log = get_logger(__name__)
T = TypeVar("T")

AUDIT_COLLECTION: Final = "audit_log"
AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX = 20, 100
PRIORITIES: Final = [str(name) for name in QUEUE_ORDER]


class AdminServicer(task_service_pb2_grpc.AdminServiceServicer):
    """The operator's API, served by each task service beside the TaskService."""

    def __init__(self, redis: Redis, audit: AsyncCollection[dict[str, Any]]) -> None:
        self.redis = redis
        self.audit = audit

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
            counts = queue_status(self.redis, queue(self.redis, name), AGE_SAMPLE_JOBS)
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
