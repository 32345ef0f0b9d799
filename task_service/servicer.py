"""The TaskService RPC methods.

Every method runs behind the AuthInterceptor (task_service.auth), so `current_principal()`
is the authenticated caller: a user key acts only for its own user, and another
user's task reads as not found. Client text reaches logs only as structured
fields (JSON-escaped), never inside a message.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from pymongo.errors import DuplicateKeyError, PyMongoError
from redis.exceptions import RedisError
from ulid import ULID

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common import timeline
from aitask_common.events import EventKind
from aitask_common.ledger import InsufficientCredit
from aitask_common.logging import get_logger
from aitask_common.metrics import CREDITS, TASKS_CREATED
from aitask_common.outputs import STORE_ERRORS, OutputLinks, OutputStore
from aitask_common.tasks import (
    BILLING_OPEN_FIELD,
    TaskDocument,
    TaskStatus,
    TaskType,
    task_buckets,
    task_to_proto,
    utcnow,
)
from task_service.api_keys import Role
from task_service.auth import current_principal, metadata_value
from task_service.billing import (
    Billing,
    abort_payment_required,
    balance_to_proto,
    entry_to_proto,
    page_size,
)
from task_service.cancel import CancelRefused, CancelUnavailable, TaskCanceller
from task_service.catalogue import CatalogueCache
from task_service.enqueue import TaskQueue
from task_service.idempotency import METADATA_NAME, fingerprint, idempotency_key, scoped
from task_service.limits import AtCap, CreditsUnknown, InflightTasks
from task_service.model_catalogue import list_models
from task_service.paging import ListFilters, next_page_token, position_of, validated_filters
from task_service.prefer import PREFER_METADATA, PREFERENCE_APPLIED_METADATA, Wait, requested_wait
from task_service.queue_position import QueuePositions
from task_service.result_cache import FinalResultCache, Lookup
from task_service.settings import TaskServiceSettings
from task_service.storage import FINGERPRINT_FIELD, IDEMPOTENCY_FIELD, TaskStore
from task_service.validation import InvalidRequest, ValidatedRequest, is_task_id, validate_create, validate_user_id
from task_service.watch import Follower, StoreUnavailable, WatchHub, task_events
from task_service.webhooks import WebhookReads, check_webhook, secret_to_proto

log = get_logger(__name__)

# A create whose user has no credit hash in Redis rebuilds it (or finds it rebuilt by another) this many times.
CREDIT_REBUILDS = 2

T = TypeVar("T")

# The create request of each task type (RetryTask rebuilds one from a stored task).
CREATE_REQUESTS: dict[TaskType, type[Any]] = {
    TaskType.IMAGE: pb.CreateImageTaskRequest,
    TaskType.VIDEO: pb.CreateVideoTaskRequest,
    TaskType.TEXT: pb.CreateTextTaskRequest,
}


class TaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    """Creates, reads, lists and deletes tasks."""

    def __init__(
        self,
        settings: TaskServiceSettings,
        store: TaskStore,
        queue: TaskQueue,
        catalogues: CatalogueCache,
        inflight: InflightTasks,
        results: FinalResultCache,
        positions: QueuePositions,
        watch_hub: WatchHub,
        links: OutputLinks,
        outputs: OutputStore,
        billing: Billing,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.catalogues = catalogues
        self.inflight = inflight
        self.results = results
        self.positions = positions
        self.watch_hub = watch_hub
        self.links = links
        self.outputs = outputs
        self.billing = billing
        self.canceller = TaskCanceller(store, results.redis, queue.connection, results, watch_hub.publish)
        self.webhooks = WebhookReads(settings, store, results.redis)

    async def CreateImageTask(
        self, request: pb.CreateImageTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateImageTaskResponse:
        created, message = await self._create_and_wait(TaskType.IMAGE, request, context)
        return pb.CreateImageTaskResponse(success=True, data=created, message=message)

    async def CreateVideoTask(
        self, request: pb.CreateVideoTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateVideoTaskResponse:
        created, message = await self._create_and_wait(TaskType.VIDEO, request, context)
        return pb.CreateVideoTaskResponse(success=True, data=created, message=message)

    async def CreateTextTask(
        self, request: pb.CreateTextTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTextTaskResponse:
        created, message = await self._create_and_wait(TaskType.TEXT, request, context)
        return pb.CreateTextTaskResponse(success=True, data=created, message=message)

    async def GetTaskResult(
        self, request: pb.GetTaskResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskResultResponse:
        task_id = request.task_id
        await self._check_task_id(task_id, context)
        wait = await self._requested_wait(request, context)
        cached = await self.results.get(task_id)
        if isinstance(cached, pb.Task):
            # Exactly what `_find` answers for another user's task.
            if not current_principal().may_act_for(cached.user_id):
                await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(task_id))
            await self._preference_applied(wait, context)
            return pb.GetTaskResultResponse(success=True, data=self.links.sign(cached), message="ok")
        if cached is Lookup.DELETED:
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(task_id))
        if wait is not None:
            # Only final states are cached: a wait that ended before the task did leaves nothing behind.
            task = await self._wait_for(task_id, wait.seconds, context)
        else:
            task = self.links.sign(task_to_proto(await self._find_valid(task_id, context)))
        if TaskStatus(task.status).is_final:
            await self.results.put(task)
        await self.positions.fill_in(task)
        await self._preference_applied(wait, context)
        return pb.GetTaskResultResponse(success=True, data=task, message="ok")

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TaskEvent]:
        task_id = request.task_id
        await self._check_task_id(task_id, context)
        async with self.watch_hub.follow(task_id) as follower:
            current = await self._followed_state(follower, task_id, context)
            async for event in task_events(follower, current):
                yield event
                if not event.success:
                    # The stream has begun: its last message said so (for SSE clients); the status says it too.
                    await context.abort(grpc.StatusCode.NOT_FOUND, event.message)

    async def DeleteTask(
        self, request: pb.DeleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTaskResponse:
        document = await self._find(request.task_id, context)
        # Against a read that missed the result cache and found the task in MongoDB before the delete: its SET NX
        # lands before the tombstone (which overwrites it) or after (NX refuses it); a read of MongoDB after the
        # delete caches nothing. DEL first, so that if the tombstone write fails only such a racing read, not an
        # earlier one, can have left a copy (served for up to RESULT_CACHE_SECONDS). A failed DEL refuses the delete.
        await self._forget_cached(request.task_id, context)
        if document.get(BILLING_OPEN_FIELD):
            await self._billing(context, self.billing.settle_deleted(dict(document)))
        if not await self.database_call(context, self.store.delete(request.task_id, document["user_id"])):
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(request.task_id))
        await self.results.mark_deleted(request.task_id)
        await self._purge_output(document)
        await self.watch_hub.publish(request.task_id, EventKind.FINAL)
        await self._release_slot(document["user_id"], request.task_id)
        log.info("task deleted", task_id=request.task_id)
        return pb.DeleteTaskResponse(success=True, data=pb.DeletedTask(task_id=request.task_id), message="task deleted")

    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelTaskResponse:
        document = await self._find(request.task_id, context)
        try:
            task, cancelled_now = await self.canceller.cancel(document)
        except CancelRefused as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except CancelUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        except LookupError:
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(request.task_id))
        message = "task cancelled" if cancelled_now else "task already cancelled"
        return pb.CancelTaskResponse(success=True, data=self.links.sign(task_to_proto(task)), message=message)

    async def ListTasks(self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext) -> pb.ListTasksResponse:
        try:
            user_id = validate_user_id(current_principal().user_or_own(request.user_id))
            filters = validated_filters(user_id=user_id, task_type=request.type, status=request.status)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        await self._check_acts_for(user_id, context)
        page = await self.page(filters, request.limit, request.offset, request.page_token, context)
        return pb.ListTasksResponse(success=True, data=page, message="ok")

    async def page(
        self, filters: ListFilters, limit: int, offset: int, page_token: str, context: grpc.aio.ServicerContext
    ) -> pb.TaskPage:
        """One page of the tasks `filters` select, newest first (ListTasks, and the admin's SearchTasks)."""
        try:
            if limit < 0:
                raise InvalidRequest("limit", "must not be negative")
            if offset < 0:
                raise InvalidRequest("offset", "must not be negative")
            after = position_of(page_token, filters) if page_token else None
            if after is not None and offset:
                raise InvalidRequest("offset", "must be 0 with a page_token (the token says where the page starts)")
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        limit = min(limit or self.settings.list_limit_default, self.settings.list_limit_max)
        documents = await self.database_call(context, self.store.list(filters, limit, offset, after))
        return pb.TaskPage(
            tasks=[self.links.sign(task_to_proto(document, include_payload=False)) for document in documents],
            limit=limit,
            offset=offset,
            next_page_token=next_page_token(documents[-1], filters) if len(documents) == limit else "",
        )

    async def recreate(self, document: TaskDocument, context: grpc.aio.ServicerContext) -> pb.TaskCreated:
        """A new task asking what `document` asked, for its owner, created as any other (validated against today's
        catalogue, counted in flight, its credit held)."""
        task_type = TaskType(document["type"])
        request = CREATE_REQUESTS[task_type](
            prompt=document["prompt"],
            user_id=document["user_id"],
            provider=document["provider"],
            model=document["model"],
            webhook_url=document.get("webhook_url", ""),
            webhook_events=document.get("webhook_events", []),
            allow_fallback=document.get("allow_fallback", False),
        )
        for field, value in document["parameters"].items():
            setattr(request, field, value)
        created, _ = await self._create(task_type, request, context)
        return created

    async def GetWebhookSecret(
        self, request: pb.GetWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWebhookSecretResponse:
        user_id = await self._named_user(request.user_id, context)
        secrets = await self.database_call(context, self.webhooks.secrets.get(user_id))
        return pb.GetWebhookSecretResponse(success=True, data=secret_to_proto(secrets), message="ok")

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWebhookSecretResponse:
        user_id = await self._named_user(request.user_id, context)
        secrets = await self.database_call(context, self.webhooks.secrets.rotate(user_id))
        return pb.GetWebhookSecretResponse(
            success=True, data=secret_to_proto(secrets), message="secret rotated; the previous one signs for 24 h"
        )

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookDeliveriesResponse:
        task = await self._find(request.task_id, context)
        deliveries = await self.database_call(context, self.webhooks.delivery_log(task))
        return pb.ListWebhookDeliveriesResponse(success=True, data=deliveries, message="ok")

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        user_id = await self._named_user(request.user_id, context)
        credits = await self._billing(context, self.billing.credits(user_id))
        return pb.GetBalanceResponse(success=True, data=balance_to_proto(credits), message="ok")

    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLedgerEntriesResponse:
        user_id = await self._named_user(request.user_id, context)
        try:
            limit = page_size(request.limit)
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if request.offset < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "offset: must not be negative")
        entries, credits = await self._billing(context, self.billing.page(user_id, limit, request.offset))
        page = pb.LedgerPage(entries=[entry_to_proto(entry) for entry in entries], balance=balance_to_proto(credits))
        return pb.ListLedgerEntriesResponse(success=True, data=page, message="ok")

    async def GrantCredits(
        self, request: pb.GrantCreditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GrantCreditsResponse:
        if current_principal().role is not Role.ADMIN:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "granting credits needs an admin key")
        try:
            user_id = validate_user_id(request.user_id)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if request.amount == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "amount: must not be 0")
        try:
            entry = await self._billing(
                context, self.billing.grant(user_id, request.amount, request.note, request.grant_id)
            )
        except InsufficientCredit as error:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"amount: cannot take {error.cost} credits, {error.available} available",
            )
        log.info("credits granted", user_id=user_id, amount=request.amount, balance=entry.balance_after)
        return pb.GrantCreditsResponse(success=True, data=entry_to_proto(entry), message="credits granted")

    async def _named_user(self, requested: str, context: grpc.aio.ServicerContext) -> str:
        """Whose secret, balance or ledger a call names: `requested`, or the caller's own user when empty."""
        try:
            user_id = validate_user_id(requested or current_principal().user_id)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        await self._check_acts_for(user_id, context)
        return user_id

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        try:
            models = await list_models(self.catalogues, request.type, self.settings.model_fallbacks)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except RedisError as error:
            log.error("registry unreachable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task registry unavailable, retry later")
        return pb.ListModelsResponse(success=True, data=models, message="ok")

    async def _create_and_wait(
        self, task_type: TaskType, request: Any, context: grpc.aio.ServicerContext
    ) -> tuple[pb.TaskCreated, str]:
        """`_create`, then, when the request asks to wait, the task once final or after the wait."""
        wait = await self._requested_wait(request, context)
        created, message = await self._create(task_type, request, context)
        if wait is not None:
            task = await self._wait_for(created.task_id, wait.seconds, context)
            created.task.CopyFrom(task)
            created.status = task.status
            await self._preference_applied(wait, context)
        return created, message

    async def _requested_wait(self, request: Any, context: grpc.aio.ServicerContext) -> Wait | None:
        try:
            return requested_wait(request, metadata_value(context, PREFER_METADATA))
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise AssertionError("unreachable: abort raises") from error

    @staticmethod
    async def _preference_applied(wait: Wait | None, context: grpc.aio.ServicerContext) -> None:
        """Say which `Prefer: wait` was applied (Envoy turns initial metadata into response headers)."""
        if wait is not None and wait.applied is not None:
            await context.send_initial_metadata(((PREFERENCE_APPLIED_METADATA, wait.applied),))

    async def _wait_for(self, task_id: str, seconds: int, context: grpc.aio.ServicerContext) -> pb.Task:
        """The task once final, or after `seconds`: its state then (a copy, free to change)."""
        async with self.watch_hub.follow(task_id) as follower:
            current = await self._followed_state(follower, task_id, context)
            ended = await follower.until_final(current, seconds)
        if ended is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(task_id))
            raise AssertionError("unreachable: abort raises")
        task = pb.Task()
        task.CopyFrom(ended)
        return task

    @staticmethod
    async def _followed_state(follower: Follower, task_id: str, context: grpc.aio.ServicerContext) -> pb.Task:
        """A follower's first state, if the task exists and the caller may see it."""
        try:
            state = await follower.next()
        except StoreUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            raise AssertionError("unreachable: abort raises") from error
        if state is None or not current_principal().may_act_for(state.user_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(task_id))
            raise AssertionError("unreachable: abort raises")
        return state

    async def _create(
        self, task_type: TaskType, request: Any, context: grpc.aio.ServicerContext
    ) -> tuple[pb.TaskCreated, str]:
        """Validate, authorise, honour the idempotency key and the in-flight cap, store, enqueue."""
        request.user_id = current_principal().user_or_own(request.user_id)
        valid = await self._validate(task_type, request, context)
        await self._check_acts_for(valid.user_id, context)
        scoped_key = await self._scoped_idempotency_key(valid.user_id, request, context)
        digest = fingerprint(valid)
        if scoped_key is not None:
            original = await self.database_call(context, self.store.get_by_idempotency(valid.user_id, scoped_key))
            if original is not None:
                return await self._replay(original, digest, context)
        task_id = str(ULID())
        await self._reserve_slot(valid, task_id, context)
        document = _new_task(task_id, valid, scoped_key, digest)
        try:
            original = await self._insert(document, context)
        except BaseException:  # the database refused the task (an abort raises)
            if valid.cost:
                await self.billing.release_unstored(valid.user_id, task_id)
            raise
        if original is not None:
            if valid.cost:
                await self.billing.release_unstored(valid.user_id, task_id)
            return await self._replay(original, digest, context)
        await self._enqueue(document, context)
        TASKS_CREATED.labels(valid.provider, valid.model, task_type.value).inc()
        log.info(
            "task created",
            task_id=task_id,
            type=task_type.value,
            provider=valid.provider,
            model=valid.model,
            user_id=valid.user_id,
        )
        created = pb.TaskCreated(
            task_id=task_id, status=TaskStatus.PENDING.value, provider=valid.provider, model=valid.model
        )
        return created, f"{task_type.value} task created"

    async def _validate(self, task_type: TaskType, request: Any, context: grpc.aio.ServicerContext) -> ValidatedRequest:
        try:
            catalogues = await self.catalogues.current(request.provider)
            valid = validate_create(task_type, request, catalogues, self.settings.max_prompt_chars)
            webhook = await check_webhook(request, self.settings)
            if webhook is not None:
                valid = dataclasses.replace(valid, webhook_url=webhook.url, webhook_events=tuple(webhook.events))
            if not self.settings.billing_enabled:
                valid = dataclasses.replace(valid, cost=0)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except RedisError as error:
            log.error("registry unreachable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task registry unavailable, retry later")
        return valid

    @staticmethod
    async def _check_acts_for(user_id: str, context: grpc.aio.ServicerContext) -> None:
        if not current_principal().may_act_for(user_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "user_id: this API key may act only for its own user"
            )

    @staticmethod
    async def _scoped_idempotency_key(user_id: str, request: Any, context: grpc.aio.ServicerContext) -> str | None:
        try:
            key = idempotency_key(metadata_value(context, METADATA_NAME), request.idempotency_key)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return scoped(user_id, key) if key is not None else None

    async def _insert(self, document: TaskDocument, context: grpc.aio.ServicerContext) -> TaskDocument | None:
        """Store a new task: None once stored, else the task that already holds its idempotency key."""
        try:
            await self.store.insert(document)
        except DuplicateKeyError:
            # A concurrent create with the same key won the insert (the unique index decides): this is its retry.
            await self._release_slot(document["user_id"], document["_id"])
            scoped_key = document[IDEMPOTENCY_FIELD]
            original = await self.database_call(context, self.store.get_by_idempotency(document["user_id"], scoped_key))
            if original is None:
                await context.abort(grpc.StatusCode.ABORTED, "a concurrent request used this idempotency key; retry")
            return original
        except PyMongoError as error:
            await self._release_slot(document["user_id"], document["_id"])
            log.error("database unavailable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task database unavailable, retry later")
        return None

    @staticmethod
    async def _replay(
        original: TaskDocument, digest: str, context: grpc.aio.ServicerContext
    ) -> tuple[pb.TaskCreated, str]:
        """The answer to a create whose idempotency key is taken: the original task, if it asked the same."""
        if original.get(FINGERPRINT_FIELD) != digest:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "idempotency_key: already used for a different request")
        log.info("idempotent create replayed", task_id=original["_id"])
        created = pb.TaskCreated(
            task_id=original["_id"], status=original["status"], provider=original["provider"], model=original["model"]
        )
        return created, "task already created with this idempotency key"

    async def _reserve_slot(self, valid: ValidatedRequest, task_id: str, context: grpc.aio.ServicerContext) -> None:
        """Count the task in flight and hold its credits in one step, or refuse the create having written nothing:
        429 at the in-flight cap, 402 short of credit."""
        for attempt in range(CREDIT_REBUILDS + 1):
            try:
                await self.inflight.reserve(valid.user_id, task_id, valid.cost)
            except CreditsUnknown:
                if attempt == CREDIT_REBUILDS:
                    break
                await self._billing(context, self.billing.rebuild(valid.user_id))
                continue
            except AtCap:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many tasks in flight: at most {self.inflight.cap} pending or processing per user",
                )
            except InsufficientCredit as error:
                await abort_payment_required(context, error)
            except RedisError as error:
                log.error("in-flight cap unavailable", error=str(error))
                await context.abort(grpc.StatusCode.UNAVAILABLE, "task queue unavailable, retry later")
            if valid.cost:
                CREDITS.labels("reserved", valid.model).inc(valid.cost)
            return
        await context.abort(grpc.StatusCode.UNAVAILABLE, "credits unavailable, retry later")

    async def _release_slot(self, user_id: str, task_id: str) -> None:
        try:
            await self.inflight.release(user_id, task_id)
        except RedisError as error:
            # Harmless: the dispatcher's reconciler prunes ids whose task is gone.
            log.warning("could not release in-flight slot", task_id=task_id, error=str(error))

    async def _enqueue(self, document: TaskDocument, context: grpc.aio.ServicerContext) -> None:
        task_id = document["_id"]
        try:
            await self.queue.enqueue(task_id, document["parameters"]["priority"], document["user_id"])
        except RedisError as error:
            # Undo the insert so a rejected create leaves nothing behind.
            log.error("enqueue failed; task withdrawn", task_id=task_id, error=str(error))
            await self.database_call(context, self.store.delete(task_id, document["user_id"]))
            await self._release_slot(document["user_id"], task_id)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task queue unavailable, retry later")

    async def _purge_output(self, document: TaskDocument) -> None:
        """Delete a deleted task's stored output. Any stored copy is removed, even one the document does not
        record yet (a copy finishing while the delete ran); a store that fails leaves it to the storage check
        (`queue-tools storage-check --repair`), the task stays deleted."""
        if document["type"] == TaskType.TEXT:
            return
        try:
            await asyncio.to_thread(self.outputs.delete, document["_id"])
        except STORE_ERRORS as error:
            log.error("output of a deleted task not removed", task_id=document["_id"], error=str(error))

    async def _forget_cached(self, task_id: str, context: grpc.aio.ServicerContext) -> None:
        try:
            await self.results.forget(task_id)
        except RedisError as error:
            log.error("result cache unavailable; task not deleted", task_id=task_id, error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task cache unavailable, retry later")

    async def _find(self, task_id: str, context: grpc.aio.ServicerContext) -> TaskDocument:
        """The task, if it exists and the caller may see it; another user's task is as good as absent."""
        await self._check_task_id(task_id, context)
        return await self._find_valid(task_id, context)

    @staticmethod
    async def _check_task_id(task_id: str, context: grpc.aio.ServicerContext) -> None:
        if not task_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "task_id: is required")
        if not is_task_id(task_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(task_id))

    async def _find_valid(self, task_id: str, context: grpc.aio.ServicerContext) -> TaskDocument:
        """`_find` for an id already checked. A user's key reads by its user too (routed to one shard); an admin key
        names no user, so its read by id asks every shard."""
        principal = current_principal()
        owner = principal.user_id if principal.role is not Role.ADMIN else None
        document = await self.database_call(context, self.store.get(task_id, owner))
        if document is not None and current_principal().may_act_for(document.get("user_id", "")):
            return document
        await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(task_id))
        raise AssertionError("unreachable: abort raises")

    @staticmethod
    async def _billing(context: grpc.aio.ServicerContext, operation: Awaitable[T]) -> T:
        """Await a credits call: Redis holds the credits, MongoDB the ledger; either down is UNAVAILABLE."""
        try:
            return await operation
        except (RedisError, PyMongoError) as error:
            log.error("credits unavailable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "credits unavailable, retry later")
            raise AssertionError("unreachable: abort raises") from error

    @staticmethod
    async def database_call(context: grpc.aio.ServicerContext, operation: Awaitable[T]) -> T:
        """Await a storage call; an unreachable database is UNAVAILABLE, not an internal error."""
        try:
            return await operation
        except PyMongoError as error:
            log.error("database unavailable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "task database unavailable, retry later")
            raise AssertionError("unreachable: abort raises") from error


def _new_task(task_id: str, valid: ValidatedRequest, scoped_key: str | None, digest: str) -> TaskDocument:
    """The stored form of a new task; the idempotency field only when a key was given (never null)."""
    now = utcnow()
    document: TaskDocument = {
        "_id": task_id,
        "type": valid.task_type.value,
        "status": TaskStatus.PENDING.value,
        "user_id": valid.user_id,
        "provider": valid.provider,
        "model": valid.model,
        "served_provider": valid.provider,
        "served_model": valid.served_model or valid.model,
        "prompt": valid.prompt,
        "parameters": valid.parameters,
        "attempts": 0,
        "in_flight": True,
        "created": now,
        "created_buckets": task_buckets(now, valid.user_id),
        "updated": now,
        "timeline": [timeline.entry("created")],
    }
    if valid.deadline_seconds is not None:
        document["deadline"] = now + timedelta(seconds=valid.deadline_seconds)
    if valid.allow_fallback:
        document["allow_fallback"] = True
    if valid.cost:
        document["billing"] = {"reserved": valid.cost, "price": valid.price}
        document["billing_open"] = True
    if valid.webhook_url:
        document["webhook_url"] = valid.webhook_url
        document["webhook_events"] = list(valid.webhook_events)
    if scoped_key is not None:
        document[IDEMPOTENCY_FIELD] = scoped_key
        document[FINGERPRINT_FIELD] = digest
    return document


def _not_found(task_id: str) -> str:
    return f"task {task_id!r} not found"
