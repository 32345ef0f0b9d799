"""Queue shards: how tasks spread over several RQ namespaces, each pinned to one Redis Cluster hash slot.

A task's jobs all live in its shard, `crc32(task_id) % QUEUE_SHARDS`. A shard is a whole RQ namespace whose every
key carries the shard's hash tag, `{q<k>}`, so that each of RQ's MULTIs (enqueue, a job's start and end, a retry)
and each of our scripts touching the shard's queue state stays in one slot, on one node:

- queue names begin with the tag (`{q1}default`): the queue list and every registry RQ names after its queue
  (`rq:queue:{q1}default`, `rq:wip:{q1}default`, ...);
- job ids begin with it (`{q1}3f2a...`): the job hash and what RQ names after a job (`rq:job:{q1}3f2a...`, its
  result stream and execution records);
- worker names begin with it, and a shard's Queue and Worker classes keep their lists of all queues and all workers
  under it (`rq:{q1}:queues`, `rq:{q1}:workers`), where RQ would share one key across shards.

Without sharding (one shard on one Redis, the default) nothing is tagged: the keys are RQ's own, as before.
The tags of shards 0, 1 and 2 hash to slots 3387, 7450 and 11641: one in each third of the slot range, so
`redis-cli --cluster create` with three masters puts them on three nodes.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import ClassVar, Final, TypeVar, cast

import rq.job
from rq import worker_registration
from rq.exceptions import StopRequested
from rq.queue import Queue
from rq.registry import clean_registries
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

AnyWorker = TypeVar("AnyWorker", bound="ShardWorker")

SHARD_TAG: Final = "{{q{}}}"
# RQ's own rule (letters, digits, `_` and `-`), after an optional shard tag.
_JOB_ID = re.compile(r"^(\{q\d+\})?[A-Za-z0-9_-]+$")
_TAG_PREFIX = re.compile(r"^\{q(\d+)\}")


def _validate_job_id(job_id: str) -> None:
    """RQ's check of a job id, letting a shard's tag lead it (RQ forbids braces, and so any hash tag)."""
    if not _JOB_ID.match(job_id):
        raise ValueError("Job ID must only contain letters, numbers, underscores and dashes, after a shard tag")


def _scheduler_key(self: RQScheduler) -> str:
    """The scheduler's own hash, under the tag of the queues it schedules: it is written in one MULTI with their
    locks. RQ names it after the scheduler alone."""
    tags = {_TAG_PREFIX.match(name) for name in self._queue_names}
    tag = next((match.group(0) for match in tags if match), "")
    return SCHEDULER_KEY_TEMPLATE % (tag + self.name)


# RQ 2.12 checks ids only through this module-level function, and names the scheduler's hash only through this
# property (tests/aitask_common/test_queue_shards.py pins both). Untagged names are left as RQ makes them.
rq.job.validate_job_id = _validate_job_id
RQScheduler.key = property(_scheduler_key)  # type: ignore[assignment,method-assign]


@dataclass(frozen=True)
class QueueShards:
    """The shard layout: `count` shards; `tagged` when keys carry shard tags (a cluster, or more than one shard)."""

    count: int = 1
    tagged: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"QUEUE_SHARDS must be at least 1, not {self.count}")

    @classmethod
    def layout(cls, count: int, cluster: bool) -> QueueShards:
        return cls(count, tagged=cluster or count > 1)

    def shard_of(self, task_id: str) -> int:
        """The shard every job of the task goes to (stable across processes and restarts)."""
        return zlib.crc32(task_id.encode()) % self.count if self.count > 1 else 0

    def tag(self, shard: int) -> str:
        """The hash tag of a shard's keys, or "" when keys are not tagged."""
        return SHARD_TAG.format(shard) if self.tagged else ""

    def queue_name(self, priority: str, shard: int) -> str:
        return self.tag(shard) + priority

    def new_job_id(self, shard: int) -> str:
        """A fresh job id in the shard (RQ's own kind of id, a UUID, when keys are not tagged)."""
        return self.tag(shard) + uuid.uuid4().hex if self.tagged else str(uuid.uuid4())

    def shards(self) -> range:
        return range(self.count)


def priority_of(queue_name: str) -> str:
    """The priority a shard's queue serves (`{q1}default` -> `default`)."""
    return _TAG_PREFIX.sub("", queue_name, count=1)


def shard_of_key(name: str) -> int | None:
    """The shard a tagged queue name or job id belongs to; None when untagged."""
    match = _TAG_PREFIX.match(name)
    return int(match.group(1)) if match else None


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
