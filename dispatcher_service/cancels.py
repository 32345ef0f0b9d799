"""The dispatcher's side of cancels and deadlines.

- A cancelled video's upstream job: the task service enqueues `jobs.cancel_upstream` (aitask_common.queues
  CANCEL_UPSTREAM) on the critical queue; so does a run whose submit came back after the cancel, for the job it
  just started. The provider's CancelJob cancels or deletes it where the vendor's API can, or says it cannot. A
  provider error worth retrying, no live instance, or a vendor that can act only later (FAILED_PRECONDITION:
  OpenAI deletes a video only once it is completed or failed) is tried again, as its own job, at growing
  intervals (at most a minute apart) until POLL_GIVE_UP_SECONDS after the first try. Nothing polls the job.
- Deadlines: a pending task past its `deadline` is cancelled (cancel_reason "deadline") by the run that finds
  it so (the claim refuses it: storage.TaskTransitions.claim), or by the reconciler's sweep (reconciler.py),
  whichever comes first, never after any upstream call of a run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import grpc
from pymongo.collection import Collection
from redis import Redis
from redis.exceptions import RedisError

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common import timeline
from aitask_common.events import EventKind, publish
from aitask_common.logging import get_logger
from aitask_common.provider_errors import RETRYABLE_CODES
from aitask_common.rq_shards import enqueue_upstream_cancel
from aitask_common.tasks import (
    IN_FLIGHT_FIELD,
    CancelReason,
    TaskDocument,
    TaskStatus,
    out_of_flight,
    task_filter,
    utcnow,
)
from aitask_common.webhooks import MESSAGES_COLLECTION, known_webhook_events, may_send_final, record_change
from dispatcher_service.lease import TaskLease
from dispatcher_service.providers import NoLiveInstance, ProviderCallError, ProviderDirectory
from dispatcher_service.schedule import forget_finished
from dispatcher_service.settings import DispatcherSettings

log = get_logger(__name__)

# Codes after which an upstream cancel is tried again: the provider's retryable ones, and the vendor saying
# "not yet" (a job it can delete only once it has finished).
CANCEL_AGAIN_CODES = RETRYABLE_CODES | {grpc.StatusCode.FAILED_PRECONDITION}
# The longest wait between two tries of one upstream cancel.
CANCEL_AGAIN_MAX_SECONDS = 60.0
# gRPC deadline of one CancelJob call.
CANCEL_CALL_SECONDS = 30.0
# Held only around one expiry's update; the expiry matters only if the sweep dies holding it.
EXPIRE_LEASE_SECONDS = 10.0


def cancel_upstream_job(
    settings: DispatcherSettings,
    redis: Redis,
    providers: ProviderDirectory,
    task_id: str,
    provider: str,
    model: str,
    upstream_job_id: str,
    first_tried: float,
) -> str:
    """One try at cancelling a cancelled task's upstream job; a short word saying what happened."""
    request = pb.CancelJobRequest(model=model, upstream_job_id=upstream_job_id)
    try:
        response: pb.CancelJobResponse = providers.call(
            provider, lambda stub: stub.CancelJob, request, timeout=CANCEL_CALL_SECONDS
        )
    except ProviderCallError as error:
        again = isinstance(error, NoLiveInstance) or error.code in CANCEL_AGAIN_CODES
        waited = time.time() - first_tried
        if again and waited < settings.poll_give_up_seconds:
            # Soon at first (a video about to finish), then less often, up to once a minute.
            backoff = min(CANCEL_AGAIN_MAX_SECONDS, waited / 2)
            delay = max(settings.poll_max_seconds, backoff, error.retry_after_seconds or 0.0)
            log.info("upstream cancel tried again later", error=str(error), delay_seconds=delay)
            enqueue_upstream_cancel(redis, task_id, provider, model, upstream_job_id, first_tried, delay)
            return "cancel-again"
        log.warning("upstream job not cancelled", upstream_job_id=upstream_job_id, error=str(error))
        return "cancel-failed"
    if response.cancelled:
        log.info("upstream job cancelled", upstream_job_id=upstream_job_id, detail=response.detail)
        return "upstream-cancelled"
    log.info("upstream job left to finish", upstream_job_id=upstream_job_id, detail=response.detail)
    return "upstream-not-cancellable"


def deadline_passed(document: TaskDocument, now: datetime | None = None) -> bool:
    """Whether the task has a deadline and it has passed."""
    deadline = document.get("deadline")
    if deadline is None:
        return False
    if deadline.tzinfo is None:  # pymongo without tz_aware
        deadline = deadline.replace(tzinfo=UTC)
    return deadline <= (now or utcnow())


def expire(collection: Collection[Any], redis: Redis, task_id: str, user_id: str) -> bool:
    """Cancel a pending task whose deadline has passed (cancel_reason "deadline"), with the caller holding its
    lease; True if this call did. Its queued job, if any, ends at once when a worker takes it."""
    now = utcnow()
    update = out_of_flight(
        {
            "$set": {
                "status": TaskStatus.CANCELLED.value,
                "cancel_reason": CancelReason.DEADLINE.value,
                "updated": now,
            },
            "$push": {timeline.FIELD: timeline.entry("cancelled", reason=CancelReason.DEADLINE.value)},
        },
        may_send_final(known_webhook_events(task_id)),
    )
    condition = task_filter(task_id, user_id) | {"status": TaskStatus.PENDING.value, "deadline": {"$lte": now}}
    if collection.update_one(condition, update).modified_count != 1:
        return False
    log.info("task cancelled: deadline passed before it started upstream", task_id=task_id)
    try:
        forget_finished(redis, task_id, user_id)
    except RedisError as error:
        log.warning("expired task not forgotten in Redis: the reconciler prunes it", error=str(error))
    record_change(collection, collection.database[MESSAGES_COLLECTION], task_id, user_id, EventKind.FINAL, redis=redis)
    publish(redis, task_id, EventKind.FINAL)
    return True


def expire_overdue(collection: Collection[Any], redis: Redis, limit: int) -> int:
    """The reconciler's sweep: cancel up to `limit` pending tasks past their deadline, however deep the backlog
    in front of their jobs; how many. One query (equalities on in_flight and status, which FerretDB hands to
    PostgreSQL: the first is indexed there)."""
    overdue = collection.find(
        {IN_FLIGHT_FIELD: True, "status": TaskStatus.PENDING.value, "deadline": {"$lte": utcnow()}},
        {"_id": True, "user_id": True},
    ).limit(limit)
    expired = 0
    for task in overdue:
        # A worker holding the lease is claiming the task: its claim refuses it (storage.py) and expires it itself.
        with TaskLease(redis, task["_id"], EXPIRE_LEASE_SECONDS) as lease:
            if lease.acquired and expire(collection, redis, task["_id"], task["user_id"]):
                expired += 1
    return expired
