"""Cancelling a task (CancelTask): a pending task never reaches an upstream, a running one's result is dropped,
and a running video leaves the poll set at once while a dispatcher cancels or deletes its upstream job.

The writes go in this order, so that a crash or an outage between any two leaves nothing that runs or polls a
cancelled task:
1. Redis: the task's cancel mark (aitask_common.queues.cancelled_key) and its removal from the poll set, in
   one round trip. A poll running right then plans no next one: schedule_poll checks the mark. A video with an
   upstream job is not cancelled without this step (UNAVAILABLE); any other task does not need it.
2. The task's lease, when no worker holds it: no dispatcher step can start on the task during the MongoDB
   write (FerretDB's conditional updates are not atomic). A worker holding it is mid-step (claiming, calling
   the upstream, polling): the write goes ahead anyway, and the worker's own writes, conditional on the task
   still processing, drop whatever it gets back. (On FerretDB only, a worker write landing within the same
   few milliseconds as the cancel's could still overwrite it: the lease cannot be waited for, as a worker
   holds it for a whole upstream call.)
3. MongoDB: pending or processing → cancelled, with `cancel_reason`, conditional on the status just read.
4. Best effort: the lease released, the task out of the watch set and the user's in-flight set, its cached
   result dropped, the upstream cancel enqueued (a video with an upstream job) and the change published.
A pending task's RQ job stays where it is: the dispatcher's claim moves only pending tasks, so it ends at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from aitask_common import timeline
from aitask_common.events import EventKind
from aitask_common.logging import get_logger
from aitask_common.queues import (
    CANCELLED_MARK_SECONDS,
    LEASE_KEY_PREFIX,
    cancelled_key,
    forget_task,
    poll_hints_key,
    polls_key,
    shard_of,
)
from aitask_common.rq_shards import enqueue_upstream_cancel
from aitask_common.tasks import CancelReason, TaskDocument, TaskStatus, out_of_flight, task_filter, utcnow
from aitask_common.webhooks import MESSAGES_COLLECTION, may_send_final, record_change_async, webhook_events_of
from task_service.result_cache import FinalResultCache
from task_service.storage import TaskStore

log = get_logger(__name__)

# Held only around the MongoDB write; the expiry matters only if this process dies holding it.
CANCEL_LEASE_SECONDS = 10.0
# A status read, then a write conditional on it: a task that moved on meanwhile (pending → processing) is read
# again, at most this many times.
WRITE_ATTEMPTS = 3
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class CancelRefused(Exception):
    """The task cannot be cancelled; the message says why (safe to show the caller)."""


class CancelUnavailable(Exception):
    """A store the cancel needs is unreachable: nothing was cancelled."""


class TaskCanceller:
    """Cancels tasks for the task service."""

    def __init__(
        self,
        store: TaskStore,
        redis: AsyncRedis,
        sync_redis: Redis,
        results: FinalResultCache,
        publish: Callable[[str, EventKind], Awaitable[None]],
    ) -> None:
        self.store = store
        self.redis = redis
        # RQ enqueues through the synchronous client (task_service.enqueue).
        self.sync_redis = sync_redis
        self.results = results
        # Task change notices (task_service.watch.WatchHub.publish; best effort).
        self.publish = publish

    async def cancel(self, document: TaskDocument) -> tuple[TaskDocument, bool]:
        """Cancel the task `document` (as just read) for its user; the task after it, and whether this call
        cancelled it (False: it already was). CancelRefused for a task that finished otherwise."""
        task_id = document["_id"]
        reason = CancelReason.USER
        if TaskStatus(document["status"]).is_final:
            return self._already_final(document), False
        await self._mark(document, reason)
        token = await self._take_lease(task_id)
        try:
            cancelled = await self._write(document, reason)
        except PyMongoError as error:
            await self._best_effort("cancel mark not removed", lambda: self.redis.delete(cancelled_key(task_id)))
            raise CancelUnavailable("task database unavailable, retry later") from error
        finally:
            if token is not None:
                await self._best_effort("cancel lease not released", lambda: self._release_lease(task_id, token))
        if cancelled is None:
            current = await self.store.get(task_id, document["user_id"])
            if current is None:
                raise LookupError(task_id)
            return self._already_final(current), False
        await self._after(cancelled)
        log.info("task cancelled", task_id=task_id, reason=reason.value, was=document["status"])
        return cancelled, True

    @staticmethod
    def _already_final(document: TaskDocument) -> TaskDocument:
        if document["status"] == TaskStatus.CANCELLED:
            return document
        raise CancelRefused(
            f"task {document['_id']!r} is {document['status']}: only a pending or processing task can be cancelled"
        )

    async def _mark(self, document: TaskDocument, reason: CancelReason) -> None:
        task_id = document["_id"]
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                shard = shard_of(task_id)
                pipe.set(cancelled_key(task_id), reason.value, ex=CANCELLED_MARK_SECONDS)
                pipe.zrem(polls_key(shard), task_id)
                pipe.hdel(poll_hints_key(shard), task_id)
                await pipe.execute()
        except RedisError as error:
            if document.get("upstream_job_id"):
                log.error("cancel refused: Redis unavailable for a running video", task_id=task_id, error=str(error))
                raise CancelUnavailable("task queue unavailable, retry later") from error
            log.warning("cancel goes ahead without Redis", task_id=task_id, error=str(error))

    async def _take_lease(self, task_id: str) -> str | None:
        """The lease's token if this call took it, None if a worker holds it (or Redis is unreachable)."""
        token = uuid.uuid4().hex
        try:
            taken = await self.redis.set(
                LEASE_KEY_PREFIX + task_id, token, nx=True, px=int(CANCEL_LEASE_SECONDS * 1000)
            )
        except RedisError:
            return None
        return token if taken else None

    async def _release_lease(self, task_id: str, token: str) -> None:
        await self.redis.eval(_RELEASE, 1, LEASE_KEY_PREFIX + task_id, token)

    async def _write(self, document: TaskDocument, reason: CancelReason) -> TaskDocument | None:
        """The conditional write; the task after it, or None once it is final (cancelled or not)."""
        task_id = document["_id"]
        for _ in range(WRITE_ATTEMPTS):
            status = document["status"]
            if TaskStatus(status).is_final:
                return None
            update = out_of_flight(
                {
                    "$set": {
                        "status": TaskStatus.CANCELLED.value,
                        "cancel_reason": reason.value,
                        "cancelled_from": status,
                        "updated": utcnow(),
                    },
                    "$push": {timeline.FIELD: timeline.entry("cancelled", reason=reason.value)},
                },
                may_send_final(webhook_events_of(document)),
            )
            written = await self.store.collection.find_one_and_update(
                task_filter(task_id, document["user_id"]) | {"status": status},
                update,
                return_document=ReturnDocument.AFTER,
            )
            if written is not None:
                return written
            current = await self.store.get(task_id, document["user_id"])
            if current is None:
                return None
            document = current
        return None

    async def _after(self, task: TaskDocument) -> None:
        """Step 4 of the module's docstring."""
        task_id = task["_id"]

        async def forget() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                forget_task(pipe, task_id, task["user_id"])
                await pipe.execute()

        await self._best_effort("cancelled task not forgotten in Redis: the reconciler prunes it", forget)
        await self._best_effort("result cache not cleared", lambda: self.results.forget(task_id))
        upstream_job_id = task.get("upstream_job_id")
        if upstream_job_id:
            await self._best_effort(
                "upstream job not cancelled: Redis unavailable",
                lambda: asyncio.to_thread(
                    enqueue_upstream_cancel, self.sync_redis, task_id, task["provider"], task["model"], upstream_job_id
                ),
            )
        await record_change_async(
            self.store.collection.database[MESSAGES_COLLECTION], task, EventKind.FINAL, self.redis
        )
        await self.publish(task_id, EventKind.FINAL)

    @staticmethod
    async def _best_effort(warning: str, operation: Callable[[], Awaitable[Any]]) -> None:
        try:
            await operation()
        except RedisError as error:
            log.warning(warning, error=str(error))
