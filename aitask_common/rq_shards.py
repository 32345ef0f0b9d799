"""RQ for queue shards (aitask_common.queue_shards): the Queue and worker classes of one shard, the two places
RQ 2.12 names a key in a way no subclass reaches, adjusted so a shard's tag leads them, and the one job both the
task service and the dispatcher enqueue by hand (an upstream cancel).

A shard's worker runs on a plain client of the master serving its slot (aitask_common.redis_cluster.shard_client),
so every key RQ touches for it must be in that slot.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import timedelta
from typing import ClassVar, Final, TypeVar, cast

import rq.job
from redis import Redis
from rq import worker_registration
from rq.exceptions import StopRequested
from rq.queue import Queue
from rq.registry import clean_registries
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.serializers import JSONSerializer
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from aitask_common.queue_shards import TAG_PREFIX, layout, shard_of_key
from aitask_common.queues import CANCEL_UPSTREAM, Priority, job_options, shard_of
from aitask_common.redis_clients import rq_connection

AnyWorker = TypeVar("AnyWorker", bound="ShardWorker")
# RQ's own rule (letters, digits, `_` and `-`), after an optional shard tag.
_JOB_ID: Final = re.compile(r"^(\{q\d+\})?[A-Za-z0-9_-]+$")


def _validate_job_id(job_id: str) -> None:
    """RQ's check of a job id, letting a shard's tag lead it (RQ forbids braces, and so any hash tag)."""
    if not _JOB_ID.match(job_id):
        raise ValueError("Job ID must only contain letters, numbers, underscores and dashes, after a shard tag")


def _scheduler_key(self: RQScheduler) -> str:
    """The scheduler's own hash, under the tag of the queues it schedules: it is written in one MULTI with their
    locks. RQ names it after the scheduler alone."""
    tags = {TAG_PREFIX.match(name) for name in self._queue_names}
    tag = next((match.group(0) for match in tags if match), "")
    return SCHEDULER_KEY_TEMPLATE % (tag + self.name)


# RQ 2.12 checks ids only through this module-level function, and names the scheduler's hash only through this
# property (tests/dispatcher_service/test_rq_contract.py pins both). Untagged names are left as RQ makes them.
RQ_VALIDATE_JOB_ID: Final = rq.job.validate_job_id
RQ_SCHEDULER_KEY: Final = RQScheduler.key
rq.job.validate_job_id = _validate_job_id
RQScheduler.key = property(_scheduler_key)  # type: ignore[assignment,method-assign]


@functools.cache
def shard_queue_class(tag: str) -> type[Queue]:
    """RQ's Queue, keeping the shard's list of queues under its tag (RQ's one `rq:queues` would join every shard's
    enqueue MULTI to one slot)."""
    if not tag:
        return Queue
    return type(f"Queue{tag}", (Queue,), {"redis_queues_keys": f"rq:{tag}:queues"})


class ShardWorker(BaseWorker):
    """What a worker of one shard does differently from RQ's, as a mixin placed before an RQ worker class
    (`class W(ShardWorker, SimpleWorker)`); with no tag (a single Redis, one shard) it is RQ's own.

    Its connection reaches the shard's master only (aitask_common.redis_cluster.shard_client), so RQ's global keys
    become the shard's: the suspension flag (`rq suspend` is per shard: `rq:{q1}:suspended`) and the list of
    workers; RQ's job groups, which aitask does not use, are not cleaned.
    """

    shard_tag: ClassVar[str] = ""

    @property
    def shard(self) -> int:
        """The queue shard this worker serves (0 without sharding)."""
        return shard_of_key(self.shard_tag) or 0

    def check_for_suspension(self, burst: bool) -> None:
        if not self.shard_tag:
            super().check_for_suspension(burst)
            return
        self.heartbeat()
        while not self._stop_requested and self.connection.exists(suspended_key(self.shard_tag)):
            if burst:
                raise StopRequested
            self.set_state(WorkerStatus.SUSPENDED)
            time.sleep(1)
            self.heartbeat()

    def clean_registries(self) -> None:
        if not self.shard_tag:
            super().clean_registries()  # type: ignore[no-untyped-call]  # rq leaves it unannotated
            return
        for target in self.queues:
            if target.acquire_maintenance_lock():
                clean_registries(target, self._exc_handlers)
                dead = [key for key in worker_registration.get_keys(target) if not self.connection.exists(key)]
                if dead:
                    self.connection.srem(worker_registration.WORKERS_BY_QUEUE_KEY % target.name, *dead)
                    self.connection.srem(self.redis_workers_keys, *dead)
                target.intermediate_queue.cleanup(self, target)
                target.release_maintenance_lock()
        self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ annotates it None only

    def run_maintenance_tasks(self) -> None:
        if not self.shard_tag:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
            return
        if (
            self.last_cleaned_at
            and self.scheduler
            and not (self.scheduler._process and self.scheduler._process.is_alive())
        ):
            self.scheduler.acquire_locks(auto_start=True)
        self.clean_registries()


def suspended_key(tag: str) -> str:
    """RQ's suspension flag, for the workers of one shard."""
    return f"rq:{tag}:suspended" if tag else WORKERS_SUSPENDED


def shard_worker_class(base: type[AnyWorker], tag: str) -> type[AnyWorker]:
    """`base` (a ShardWorker) serving one shard: its queues are the shard's, and its registration lives under the
    tag. A worker serves a single shard: BLPOP takes its queues in one call, so they must share a slot."""
    if not tag:
        return base
    attributes = {"shard_tag": tag, "redis_workers_keys": f"rq:{tag}:workers", "queue_class": shard_queue_class(tag)}
    return cast(type[AnyWorker], type(f"{base.__name__}{tag}", (base,), attributes))


def shard_queue(connection: Redis, priority: str, shard: int) -> Queue:
    """The RQ queue of `priority` in `shard` (aitask_common.queue_shards.layout), with the JSON serializer, on the
    shard's RQ client (aitask_common.redis_clients.rq_connection)."""
    shards = layout()
    return _shard_queue(rq_connection(connection, shard), shards.queue_name(str(priority), shard), shards.tag(shard))


# Building a Queue checks its serializer against a typing.Protocol, which walks the protocol's MRO on every
# isinstance: about 4 % of the task service's CPU under create load, when it was built per enqueue.
@functools.lru_cache(maxsize=256)
def _shard_queue(connection: Redis, name: str, tag: str) -> Queue:
    return shard_queue_class(tag)(name, connection=connection, serializer=JSONSerializer)


def job_id_option(shard: int) -> dict[str, str]:
    """The `job_id` keyword a job of `shard` is enqueued with: its tag must lead the id (RQ makes untagged ones)."""
    shards = layout()
    return {"job_id": shards.new_job_id(shard)} if shards.tagged else {}


def enqueue_upstream_cancel(
    connection: Redis,
    task_id: str,
    provider: str,
    model: str,
    upstream_job_id: str,
    first_tried: float | None = None,
    delay_seconds: float = 0.0,
) -> None:
    """Have a dispatcher cancel or delete a cancelled video's `upstream_job_id` (after `delay_seconds`), at critical
    priority, in the task's shard; `first_tried` (epoch seconds) is when cancelling it was first tried."""
    shard = shard_of(task_id)
    target = shard_queue(connection, Priority.CRITICAL, shard)
    args = (task_id, provider, model, upstream_job_id, first_tried or time.time())
    options = job_options(task_id) | job_id_option(shard)
    if delay_seconds > 0:
        target.enqueue_in(timedelta(seconds=delay_seconds), CANCEL_UPSTREAM, *args, **options)
    else:
        target.enqueue(CANCEL_UPSTREAM, *args, **options)
