"""Finds tasks that MongoDB says are in flight but nothing in Redis will move, and enqueues them again.

MongoDB is the source of truth; Redis may lose a job (a worker dying between
BLPOP and RQ's registry write, a SIGKILL mid-task, a flush or an empty restart).
A task is re-enqueued when it is pending or processing, has not changed for a
while, holds no lease, waits for no poll (a poll entry is never lost: a claimed one
comes due again), and its next job is not due in the watch set, or is long
overdue and no longer waiting in its queue or schedule (a job behind a deep
backlog is late, not lost). A duplicate job is harmless: the lease and conditional
updates make the second run a no-op, and a stored upstream job id is polled,
never paid for again.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo.collection import Collection
from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry

from aitask_common.logging import get_logger
from aitask_common.queues import POLLS_KEY, WATCH_JOBS_KEY, WATCH_KEY, enqueue_task
from aitask_common.tasks import TaskStatus, utcnow
from dispatcher_service.lease import LEASE_KEY_PREFIX
from dispatcher_service.settings import DispatcherSettings

log = get_logger(__name__)

LOCK_KEY = "aitask:reconciler:lock"
BATCH = 1000
# Watch entries for tasks that were deleted or finished long ago.
WATCH_RETENTION_SECONDS = 24 * 3600


def in_flight_queries(quiet_since: datetime) -> list[dict[str, Any]]:
    """The tasks in flight and unchanged since `quiet_since`, one query per status: FerretDB hands an
    equality on status to PostgreSQL, but filters a `$in` itself, after reading every document of the
    collection (the (status, updated) index serves both shapes on MongoDB)."""
    return [
        {"status": status.value, "updated": {"$lt": quiet_since}}
        for status in (TaskStatus.PENDING, TaskStatus.PROCESSING)
    ]


class Reconciler:
    """One pass re-enqueues stuck tasks; `start()` runs passes on a daemon thread."""

    def __init__(self, settings: DispatcherSettings, redis: Redis, tasks: Collection) -> None:
        self.settings = settings
        self.redis = redis
        self.tasks = tasks
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()

    def run_once(self) -> int:
        """Re-enqueue every stuck task; returns how many. Only one replica's reconciler works per interval."""
        interval_ms = int(self.settings.reconcile_interval_seconds * 1000)
        if not self.redis.set(LOCK_KEY, self.token, nx=True, px=max(interval_ms - 100, 100)):
            return 0
        now = time.time()
        quiet_since = utcnow() - timedelta(seconds=self.settings.reconcile_min_age_seconds)
        candidates = [
            task
            for query in in_flight_queries(quiet_since)
            for task in self.tasks.find(query, {"_id": True, "parameters.priority": True}).limit(BATCH)
        ]
        if not candidates:
            return 0
        overdue = self._unattended(candidates, now)
        waiting = self._jobs_still_waiting([task["_id"] for task, _ in overdue], now)
        requeued = 0
        for task, due in overdue:
            if task["_id"] in waiting or (due is None and self._finished_meanwhile(task["_id"])):
                continue
            reason = "no job scheduled" if due is None else f"job overdue by {now - due:.0f} s and not queued"
            log.warning("re-enqueueing stuck task", task_id=task["_id"], reason=reason)
            enqueue_task(self.redis, task["_id"], task.get("parameters", {}).get("priority", "default"))
            requeued += 1
        self._prune(now - WATCH_RETENTION_SECONDS)
        return requeued

    def _unattended(self, candidates: list[dict[str, Any]], now: float) -> list[tuple[dict[str, Any], float | None]]:
        """(task, due) of the candidates without a lease or a poll whose watch entry is missing or
        overdue by more than the grace: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for task in candidates:
            pipe.exists(LEASE_KEY_PREFIX + task["_id"])
            pipe.zscore(POLLS_KEY, task["_id"])
            pipe.zscore(WATCH_KEY, task["_id"])
        answers = pipe.execute()
        return [
            (task, due)
            for task, leased, poll, due in zip(candidates, answers[::3], answers[1::3], answers[2::3], strict=True)
            if not leased and poll is None and (due is None or due <= now - self.settings.watch_grace_seconds)
        ]

    def _finished_meanwhile(self, task_id: str) -> bool:
        """Whether a task without a watch entry reached a final state after the candidate query read it
        (finishing removes the entry; that query scans the collection on FerretDB and takes a while)."""
        task = self.tasks.find_one({"_id": task_id}, {"status": True})
        return task is None or TaskStatus(task["status"]).is_final

    def _prune(self, before: float) -> None:
        """Drop watch entries (and their job ids) of tasks deleted or finished long ago."""
        stale = self.redis.zrangebyscore(WATCH_KEY, "-inf", before, start=0, num=BATCH)
        if stale:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(WATCH_KEY, *stale)
                pipe.hdel(WATCH_JOBS_KEY, *stale)
                pipe.execute()

    def _jobs_still_waiting(self, task_ids: list[str], now: float) -> set[str]:
        """The tasks whose latest job is still in its queue, or in its schedule and not overdue there
        (a schedule stalls while a killed worker's scheduler lock lives on): three round trips."""
        if not task_ids:
            return set()
        job_ids = self.redis.hmget(WATCH_JOBS_KEY, task_ids)
        known = [
            (task_id, job_id.decode() if isinstance(job_id, bytes) else job_id)
            for task_id, job_id in zip(task_ids, job_ids, strict=True)
            if job_id
        ]
        pipe = self.redis.pipeline(transaction=False)
        for _, job_id in known:
            pipe.hmget(Job.key_for(job_id), "status", "origin")
        places = pipe.execute()
        for (_, job_id), (status, origin) in zip(known, places, strict=True):
            if status == b"queued":
                pipe.lpos(f"{Queue.redis_queue_namespace_prefix}{origin.decode()}", job_id)
            elif status == b"scheduled":
                pipe.zscore(f"{ScheduledJobRegistry.key_template.format(origin.decode())}", job_id)
            else:
                pipe.echo("")  # finished, failed, started by a dead worker, or expired: not waiting
        found = pipe.execute()
        stalled_before = now - self.settings.watch_grace_seconds
        return {
            task_id
            for (task_id, _), (status, _), place in zip(known, places, found, strict=True)
            if place not in (None, b"") and (status != b"scheduled" or place > stalled_before)
        }

    def start(self) -> None:
        """Run passes every reconcile_interval_seconds until `stop()`."""
        threading.Thread(target=self._loop, name="reconciler", daemon=True).start()

    def stop(self) -> None:
        """End the loop after the current pass."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reconcile_interval_seconds):
            try:
                self.run_once()
            except Exception as error:  # noqa: BLE001 - an unreachable store must not end the loop
                log.warning("reconciler pass failed", error=str(error))
