"""Finds tasks that MongoDB says are in flight but nothing in Redis will move, and enqueues them again.

MongoDB is the source of truth; Redis may lose a job (a worker dying between
BLPOP and RQ's registry write, a SIGKILL mid-task, a flush or an empty restart).
A task is re-enqueued when it is pending or processing, has not changed for a
while, holds no lease, waits for no poll (a poll entry is never lost: a claimed one
comes due again), and its next job is not due in the watch set, or is long
overdue and no longer waiting in its queue or schedule (a job behind a deep
backlog is late, not lost). A duplicate job is harmless: the lease and conditional
updates make the second run a no-op, and a stored upstream job id is polled,
never paid for again. A processing task (its worker died mid-call) goes back at
the front of its queue: its work was already started, perhaps paid for.

Each pass first cancels the pending tasks past their deadline (dispatcher_service/cancels.py), so they end
at about their deadline even behind a deep backlog, not when a worker reaches their job.

A task waiting in its user's fair-share backlog (aitask_common/fair_share.py) is not stuck: it waits its turn,
and a backlog nothing advances any more has its next task enqueued.

Each pass also prunes the users' in-flight sets (task_service/limits.py) of tasks
that are final or gone, whatever left them there (a Redis outage during a task's
cleanup, a create withdrawn while Redis was down, a crash): a user's count of
tasks in flight heals within a pass (a few, when many users have tasks in flight).
The sets are found through their users' index (aitask_common.tasks.INFLIGHT_USERS_KEY),
so a pass costs the same however many other keys Redis holds.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Histogram
from pymongo.collection import Collection
from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry
from ulid import ULID

from aitask_common import fair_share
from aitask_common.ledger import Ledger
from aitask_common.logging import get_logger
from aitask_common.queue_shards import layout
from aitask_common.queues import polls_key, shard_of, watch_jobs_key, watch_key
from aitask_common.tasks import (
    IN_FLIGHT_FIELD,
    INFLIGHT_USERS_KEY,
    TaskStatus,
    inflight_key,
    out_of_flight,
    task_filter,
    utcnow,
)
from dispatcher_service.cancels import expire_overdue
from dispatcher_service.lease import LEASE_KEY_PREFIX
from dispatcher_service.schedule import enqueue_task, forget_finished
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.settlement import Settlement

log = get_logger(__name__)

LOCK_KEY = "aitask:reconciler:lock"
BATCH = 1000
# Watch entries for tasks that were deleted or finished long ago.
WATCH_RETENTION_SECONDS = 24 * 3600
# The users' in-flight sets: one pass reads about INFLIGHT_SETS_PER_PASS users from their index (from where the
# last pass stopped) and up to INFLIGHT_MEMBERS_PER_SET members of each set; it reads at most
# INFLIGHT_LOOKUPS_PER_PASS tasks by _id.
INFLIGHT_SETS_PER_PASS = 100
INFLIGHT_MEMBERS_PER_SET = 1000
INFLIGHT_LOOKUPS_PER_PASS = 500
# A member whose task does not exist is pruned only once its id (a ULID) is this old: the task service
# reserves the slot before it inserts the task.
CREATE_GRACE_SECONDS = 60.0
# A member whose task turned final less than this long ago is most likely one its worker is releasing right now
# (it writes the task first, then frees the slot): freed all the same, but no leak worth a warning.
FINISHING_SECONDS = 0.5

PASS_STEP_SECONDS = Histogram(
    "aitask_reconciler_step_seconds",
    "Time each step of a reconciler pass took (expire_overdue, requeue_stuck, prune_watch, prune_inflight, settle, "
    "count_low_credit, check_ledgers)",
    ["step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Observe how long the block took as `step` of a pass (a step that raised is not observed)."""
    started = time.perf_counter()
    yield
    PASS_STEP_SECONDS.labels(step).observe(time.perf_counter() - started)


def user_in_flight_query(user_id: str) -> dict[str, Any]:
    """A user's tasks in flight: equalities only, which FerretDB hands to PostgreSQL (in_flight is indexed there)."""
    return {"user_id": user_id, IN_FLIGHT_FIELD: True}


def created_at(task_id: str) -> float | None:
    """Epoch seconds in a task id (a ULID, as the task service makes them), or None for another id."""
    try:
        return ULID.from_str(task_id).timestamp
    except ValueError:
        return None


def in_flight_query(quiet_since: datetime) -> dict[str, Any]:
    """The tasks in flight and unchanged since `quiet_since`: FerretDB hands the in_flight equality to PostgreSQL,
    which answers it from that field's GIN twin without reading a final task, and checks the time itself on what
    it gets (the (in_flight, updated) index serves the whole query on MongoDB)."""
    return {IN_FLIGHT_FIELD: True, "updated": {"$lt": quiet_since}}


class Reconciler:
    """One pass re-enqueues stuck tasks; `start()` runs passes on a daemon thread."""

    def __init__(
        self,
        settings: DispatcherSettings,
        redis: Redis,
        tasks: Collection[dict[str, Any]],
        ledger: Ledger | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.tasks = tasks
        # Settles the credits of final tasks each pass (dispatcher_service/settlement.py).
        self.settlement = Settlement(ledger, tasks, redis) if ledger is not None else None
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        # Where the next pass's SSCAN of the in-flight sets' users starts.
        self._inflight_cursor = 0

    def run_once(self) -> int:
        """Re-enqueue every stuck task; returns how many. Only one replica's reconciler works per interval."""
        interval_ms = int(self.settings.reconcile_interval_seconds * 1000)
        if not self.redis.set(LOCK_KEY, self.token, nx=True, px=max(interval_ms - 100, 100)):
            return 0
        now = time.time()
        with timed("expire_overdue"):
            expire_overdue(self.tasks, self.redis, BATCH)
        with timed("requeue_stuck"):
            requeued = self._requeue_stuck(now)
        with timed("prune_watch"):
            self._prune(now - WATCH_RETENTION_SECONDS)
        with timed("prune_inflight"):
            self._prune_inflight(now)
        if self.settlement is not None:
            with timed("settle"):
                self.settlement.run_once()
            with timed("count_low_credit"):
                self.settlement.count_low_credit_users(self.settings.low_credit_threshold)
            with timed("check_ledgers"):
                self.settlement.check_touched(self.settings.ledger_check_interval_seconds)
        return requeued

    def _requeue_stuck(self, now: float) -> int:
        quiet_since = utcnow() - timedelta(seconds=self.settings.reconcile_min_age_seconds)
        fields = {"_id": True, "user_id": True, "status": True, "parameters.priority": True}
        candidates = list(self.tasks.find(in_flight_query(quiet_since), fields).limit(BATCH))
        candidates = self._landed_out(candidates)
        if not candidates:
            return 0
        overdue = self._unattended(candidates, now)
        backlogged = fair_share.backlogged_owners(self.redis, [task["_id"] for task, _ in overdue])
        self._advance_backlogs(set(backlogged.values()))
        overdue = [(task, due) for task, due in overdue if task["_id"] not in backlogged]
        waiting = self._jobs_still_waiting([task["_id"] for task, _ in overdue], now)
        requeued = 0
        for task, due in overdue:
            if task["_id"] in waiting or (due is None and self._finished_meanwhile(task["_id"], task["user_id"])):
                continue
            reason = "no job scheduled" if due is None else f"job overdue by {now - due:.0f} s and not queued"
            started = task.get("status") == TaskStatus.PROCESSING.value
            log.warning("re-enqueueing stuck task", task_id=task["_id"], reason=reason, at_front=started)
            priority = task.get("parameters", {}).get("priority", "default")
            enqueue_task(self.redis, task["_id"], priority, at_front=started, user_id=task["user_id"])
            requeued += 1
        return requeued

    def _advance_backlogs(self, owners: set[fair_share.BacklogOwner]) -> None:
        """Backlogged tasks wait their user's turn (aitask_common.fair_share); a user none of whose jobs is left in
        RQ to advance the backlog (an operator cleared them, a worker died before enqueueing the next) gets its
        next one enqueued here."""
        for backlog in owners:
            task_id = fair_share.rescue(self.redis, backlog)
            if task_id is not None:
                log.warning(
                    "enqueueing the next task of a backlog nothing advanced", task_id=task_id, owner=backlog.owner
                )
                priority, user_id = backlog.owner.split(" ", 1)
                enqueue_task(self.redis, task_id, priority, user_id=user_id)

    def _prune_inflight(self, now: float) -> int:
        """Drop the members of users' in-flight sets whose task is final or gone; how many.

        Per set, the user's tasks in flight (two equality queries); each member not among them is read by
        _id (those are the leaks, normally none) and dropped, with the rest of what Redis keeps for it, if
        its task is final, or gone and older than CREATE_GRACE_SECONDS."""
        users = self._inflight_users()
        if not users:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for user_id in users:
                pipe.sscan(inflight_key(user_id), 0, count=INFLIGHT_MEMBERS_PER_SET)
            pages = pipe.execute()
        suspects: list[tuple[str, str]] = []
        for user_id, (_, members) in zip(users, pages, strict=True):
            if not members:
                self._forget_idle_user(user_id)
                continue
            in_flight = {task["_id"] for task in self.tasks.find(user_in_flight_query(user_id), {"_id": True})}
            suspects += [(user_id, task_id) for task_id in _decoded(members) if task_id not in in_flight]
        stale = []
        for user_id, task_id in suspects[:INFLIGHT_LOOKUPS_PER_PASS]:
            task = self.tasks.find_one(task_filter(task_id, user_id), {"status": True, "updated": True})
            created = created_at(task_id)
            if task is None and (created is None or created < now - CREATE_GRACE_SECONDS):
                stale.append((user_id, task_id, "gone"))
            elif task is not None and TaskStatus(task["status"]).is_final:
                finishing = task.get("updated") is not None and task["updated"].timestamp() > now - FINISHING_SECONDS
                stale.append((user_id, task_id, "finishing" if finishing else task["status"]))
        if stale:
            with self.redis.pipeline(transaction=False) as pipe:
                for user_id, task_id, _ in stale:
                    forget_finished(pipe, task_id, user_id)
                pipe.execute()
            for user_id, task_id, why in stale:
                if why == "finishing":
                    log.debug("released the in-flight slot of a task finishing now", task_id=task_id, user_id=user_id)
                else:
                    log.warning("released an in-flight slot left behind", task_id=task_id, user_id=user_id, task=why)
        return len(stale)

    def _forget_idle_user(self, user_id: str) -> None:
        """Take a user whose in-flight set is empty out of the index. Out first, then the set is looked at again: a
        create that reserved meanwhile has its user back in by then, or adds it after (it adds after reserving),
        so a user with a task in flight always ends up in the index (the two keys may be on two cluster nodes)."""
        self.redis.srem(INFLIGHT_USERS_KEY, user_id)
        if self.redis.scard(inflight_key(user_id)):
            self.redis.sadd(INFLIGHT_USERS_KEY, user_id)

    def _inflight_users(self) -> list[str]:
        """About INFLIGHT_SETS_PER_PASS users from the in-flight sets' index, continuing where the last pass stopped."""
        self._inflight_cursor, users = self.redis.sscan(
            INFLIGHT_USERS_KEY, self._inflight_cursor, count=INFLIGHT_SETS_PER_PASS
        )
        return _decoded(users)

    def _landed_out(self, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The candidates not final; a final one still marked in flight (a writer from before in_flight existed
        finished it after the marking migration) is taken out of flight."""
        in_flight = []
        for task in candidates:
            if TaskStatus(task["status"]).is_final:
                condition = task_filter(task["_id"], task["user_id"]) | {"status": task["status"]}
                self.tasks.update_one(condition, out_of_flight({}))
            else:
                in_flight.append(task)
        return in_flight

    def _unattended(self, candidates: list[dict[str, Any]], now: float) -> list[tuple[dict[str, Any], float | None]]:
        """(task, due) of the candidates without a lease or a poll whose watch entry is missing or
        overdue by more than the grace: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for task in candidates:
            shard = shard_of(task["_id"])
            pipe.exists(LEASE_KEY_PREFIX + task["_id"])
            pipe.zscore(polls_key(shard), task["_id"])
            pipe.zscore(watch_key(shard), task["_id"])
        answers = pipe.execute()
        return [
            (task, due)
            for task, leased, poll, due in zip(candidates, answers[::3], answers[1::3], answers[2::3], strict=True)
            if not leased and poll is None and (due is None or due <= now - self.settings.watch_grace_seconds)
        ]

    def _finished_meanwhile(self, task_id: str, user_id: str) -> bool:
        """Whether a task without a watch entry reached a final state after the candidate query read it
        (finishing removes the entry; that query scans the collection on FerretDB and takes a while)."""
        task = self.tasks.find_one(task_filter(task_id, user_id), {"status": True})
        return task is None or TaskStatus(task["status"]).is_final

    def _prune(self, before: float) -> None:
        """Drop watch entries (and their job ids) of tasks deleted or finished long ago, in every queue shard."""
        for shard in layout().shards():
            stale = self.redis.zrangebyscore(watch_key(shard), "-inf", before, start=0, num=BATCH)
            if stale:
                with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zrem(watch_key(shard), *stale)
                    pipe.hdel(watch_jobs_key(shard), *stale)
                    pipe.execute()

    def _jobs_still_waiting(self, task_ids: list[str], now: float) -> set[str]:
        """The tasks whose latest job is still in its queue, or in its schedule and not overdue there
        (a schedule stalls while a killed worker's scheduler lock lives on): three round trips."""
        if not task_ids:
            return set()
        with self.redis.pipeline(transaction=False) as lookups:
            for task_id in task_ids:
                lookups.hget(watch_jobs_key(shard_of(task_id)), task_id)
            job_ids = lookups.execute()
        known = [
            (task_id, job_id.decode() if isinstance(job_id, bytes) else job_id)
            for task_id, job_id in zip(task_ids, job_ids, strict=True)
            if job_id
        ]
        pipe = self.redis.pipeline(transaction=False)
        for _, job_id in known:
            pipe.hmget(Job.key_for(job_id), "status", "origin")
        places = pipe.execute()
        # Finished, failed, started by a dead worker, or expired: not waiting, so not looked for.
        looked_for = []
        for (task_id, job_id), (status, origin) in zip(known, places, strict=True):
            if status == b"queued":
                pipe.lpos(f"{Queue.redis_queue_namespace_prefix}{origin.decode()}", job_id)
            elif status == b"scheduled":
                pipe.zscore(f"{ScheduledJobRegistry.key_template.format(origin.decode())}", job_id)
            else:
                continue
            looked_for.append((task_id, status))
        found = pipe.execute()
        stalled_before = now - self.settings.watch_grace_seconds
        return {
            task_id
            for (task_id, status), place in zip(looked_for, found, strict=True)
            if place is not None and (status != b"scheduled" or place > stalled_before)
        }

    def start(self) -> None:
        """Run passes every reconcile_interval_seconds until `stop()`."""
        threading.Thread(target=self._loop, name="reconciler", daemon=True).start()

    def stop(self) -> None:
        """End the loop after the current pass."""
        self._stop.set()

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(self.settings.reconcile_interval_seconds):
            try:
                self.run_once()
            except Exception as error:  # noqa: BLE001 - an unreachable store must not end the loop
                if not failing:  # once per outage, not every pass
                    log.warning("reconciler pass failed; retrying every interval", error=str(error))
                failing = True
                continue
            if failing:
                log.info("reconciler passes work again")
            failing = False


# KEYS[1] a user's in-flight set, KEYS[2] the users' index; ARGV[1] the user. Drops the user from the index only
# while their set is empty, so a create that reserves a slot meanwhile keeps (or re-adds) its user there.


def _decoded(values: Iterable[bytes | str]) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else value for value in values]
