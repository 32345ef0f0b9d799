"""Operator tool for the RQ queues: `python -m dispatcher_service.queue_admin [status|clear|requeue-failed]`.

- `status` (default): jobs per queue and state, how long the oldest queued job has waited, and how
  many polls of running upstream jobs wait (and are due).
  Read-only: it counts registries without RQ's cleanup, which would move abandoned jobs.
- `clear QUEUE|all`: after confirmation, removes the queued and scheduled jobs of a queue. MongoDB is
  the source of truth, so no task may be left waiting on a job that no longer exists: each unfinished
  task behind a removed job is marked failed (or, with `--requeue`, gets a fresh job).
- `requeue-failed QUEUE|all`: puts the jobs of RQ's FailedJobRegistry back on their queue, but never the job of a
  task that is already final (a cancelled one above all: it must never run).
- `breakers`: every circuit breaker (dispatcher_service/breakers.py) with its state, until when an open one
  refuses calls, and its window's calls and failures; `breakers --reset SCOPE` closes one by hand. `status`
  lists the breakers that are not closed.
- `status` also counts the cancelled tasks, by reason (a user's cancel, a deadline): their jobs may still wait in
  the queues above, and end at once, without running, when a worker takes them.

Settings come from the environment (REDIS_URL, MONGO_URL, MONGO_DATABASE), as for every service; what it
leaves unset comes from `.local/stack.env`, where `make run` writes the local stack's URLs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient
from pymongo.errors import ConnectionFailure
from redis import Redis
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from aitask_common.breaker_state import BreakerState, BreakerStatus, breaker_statuses, reset_breaker
from aitask_common.mongo import client_options
from aitask_common.queue_shards import layout
from aitask_common.queue_state import OLDEST_AGE, STATES, paused_queues, priority_status
from aitask_common.queue_state import queue_status as shared_queue_status
from aitask_common.queues import PROCESS_TASK, QUEUE_ORDER, leave_queue, polls_key
from aitask_common.redis_clients import REDIS_DOWN, redis_client
from aitask_common.rq_shards import shard_queue
from aitask_common.settings import ServiceSettings, load_settings
from aitask_common.tasks import CancelReason, TaskDocument, TaskStatus
from dispatcher_service.lease import TaskLease
from dispatcher_service.schedule import enqueue_task, forget_finished
from dispatcher_service.storage import TaskTransitions

QUEUE_NAMES = [str(name) for name in QUEUE_ORDER]
ALL = "all"
QUEUE_HELP = f"{', '.join(QUEUE_NAMES)} or {ALL}"
# `status --json`: cancelled tasks per cancel_reason, beside the queues.
CANCELLED_TASKS = "cancelled_tasks"
CANCEL_MESSAGE = "cancelled by an operator: queue {queue} cleared"
# Held only around one task's update; the expiry matters only if this tool dies holding it.
CLEAR_LEASE_SECONDS = 10.0


def queue_status(redis: Redis, name: str) -> dict[str, Any]:
    """Job counts per state for one priority's queues (summed over the queue shards), the age in seconds of its
    oldest queued job (None if empty), and whether it is paused."""
    return priority_status(redis, name) | {"paused": name in paused_queues(redis)}


def shard_statuses(redis: Redis) -> dict[str, dict[str, Any]]:
    """With several queue shards, `queue_status` of each shard's queue, by its RQ name (`{q1}default`)."""
    if layout().count == 1:
        return {}
    paused = paused_queues(redis)
    return {
        target.name: shared_queue_status(redis, target) | {"paused": name in paused}
        for shard in layout().shards()
        for name in QUEUE_NAMES
        for target in [shard_queue(redis, name, shard)]
    }


def poll_status(redis: Redis) -> dict[str, int]:
    """Polls of running upstream jobs (dispatcher_service/schedule.py), over the queue shards: how many wait, how
    many are due."""
    with redis.pipeline(transaction=False) as pipe:
        for shard in layout().shards():
            pipe.zcard(polls_key(shard))
            pipe.zcount(polls_key(shard), "-inf", time.time())
        replies = pipe.execute()
    return {"waiting": sum(replies[::2]), "due": sum(replies[1::2])}


def cancelled_counts(transitions: TaskTransitions) -> dict[str, int]:
    """Cancelled tasks per cancel_reason (one equality query each, which FerretDB hands to PostgreSQL)."""
    return {
        reason.value: transitions.collection.count_documents(
            {"status": TaskStatus.CANCELLED.value, "cancel_reason": reason.value}
        )
        for reason in CancelReason
    }


def format_status_table(statuses: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table: one row per queue, one column per state, then the oldest queued age and whether it is
    paused."""
    header = ["queue", *STATES, "oldest_queued_s", "paused"]
    rows = [header]
    for name, counts in statuses.items():
        age = counts[OLDEST_AGE]
        oldest = "-" if age is None else f"{age:.1f}"
        rows.append([name, *(str(counts[state]) for state in STATES), oldest, "yes" if counts["paused"] else "no"])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def format_breaker(status: BreakerStatus) -> str:
    """One breaker on one line: scope, state, when it next changes, its window."""
    line = f"{status.scope}: {status.state.value}"
    if status.until is not None:
        verb = "half-opens" if status.state is BreakerState.OPEN else "re-issues probes"
        line += f" ({verb} in {max(0.0, status.until - time.time()):.1f} s)"
    return line + f", window: {status.calls} calls, {status.failures} failed"


@dataclass
class ClearOutcome:
    """What clearing one queue did."""

    queue: str
    removed_jobs: int = 0
    failed_tasks: int = 0
    requeued_tasks: int = 0
    # Jobs left in place because a worker held their task (it may have just enqueued them as its next step).
    kept_jobs: int = 0


def clear_queue(redis: Redis, transitions: TaskTransitions, name: str, requeue: bool) -> ClearOutcome:
    """Remove the queued and scheduled jobs of priority `name`'s queues (in every queue shard); fail (or, with
    `requeue`, re-enqueue) their unfinished tasks. Jobs enqueued after the call starts are left alone."""
    outcome = ClearOutcome(name)
    for shard in layout().shards():
        _clear(redis, transitions, shard_queue(redis, name, shard), requeue, outcome)
    return outcome


def _clear(redis: Redis, transitions: TaskTransitions, target: Queue, requeue: bool, outcome: ClearOutcome) -> None:
    name = outcome.queue
    # One MULTI: a job the scheduler moves from the schedule to the queue meanwhile is seen exactly once.
    with redis.pipeline() as pipe:
        pipe.lrange(target.key, 0, -1)
        pipe.zrange(target.scheduled_job_registry.key, 0, -1)
        queued_ids, scheduled_ids = pipe.execute()
    job_ids = list(dict.fromkeys(raw.decode() for raw in [*queued_ids, *scheduled_ids]))
    handled: set[str] = set()
    for job_id, job in zip(job_ids, Job.fetch_many(job_ids, redis, serializer=JSONSerializer), strict=True):
        task_id = _task_id(job)
        if task_id is None or task_id in handled:
            outcome.removed_jobs += _remove_job(redis, target, job_id, job)
            continue
        # The lease makes sure no worker is mid-step on the task (FerretDB's conditional updates are not atomic).
        with TaskLease(redis, task_id, CLEAR_LEASE_SECONDS) as lease:
            if not lease.acquired:
                outcome.kept_jobs += 1
                continue
            handled.add(task_id)
            task = transitions.get(task_id, None)
            waiting = _unfinished_status(task)
            if task is not None and waiting is not None and not requeue:
                # Failed before its job goes: if this tool dies in between, the job finds a final task and stops.
                message = CANCEL_MESSAGE.format(queue=name)
                failed = {"error_message": message}
                if transitions.transition(task_id, task["user_id"], waiting, TaskStatus.FAILED, failed):
                    forget_finished(redis, task["_id"], task["user_id"])
                    outcome.failed_tasks += 1
            outcome.removed_jobs += _remove_job(redis, target, job_id, job)
        if waiting is not None and requeue:
            # Only once the lease is released: a worker would drop a job for a task it finds leased.
            enqueue_task(redis, task_id, name, user_id=task["user_id"] if task is not None else None)
            outcome.requeued_tasks += 1


def _unfinished_status(task: TaskDocument | None) -> TaskStatus | None:
    """The status of a task that still has to run, None for a final or missing one.

    Processing counts too: a processing task whose next step waits in the queue (a video poll) would stall.
    """
    if task is None or TaskStatus(task["status"]).is_final:
        return None
    return TaskStatus(task["status"])


def _task_id(job: Job | None) -> str | None:
    """The task a job works for, or None for a vanished or foreign job."""
    if job is None:
        return None
    try:
        if job.func_name != PROCESS_TASK or not job.args or not isinstance(job.args[0], str):
            return None
    except DeserializationError:
        return None
    return job.args[0]


def _remove_job(redis: Redis, target: Queue, job_id: str, job: Job | None) -> int:
    """Take a job off the queue and the schedule and delete it; 0 if a worker already took it."""
    with redis.pipeline() as pipe:
        pipe.lrem(target.key, 0, job_id)
        pipe.zrem(target.scheduled_job_registry.key, job_id)
        in_queue, in_schedule = pipe.execute()
    if not (in_queue or in_schedule):
        return 0
    if job is not None:
        job.delete(remove_from_queue=False)
    task_id = _task_id(job)
    if task_id is not None:
        # No worker will pick it up: the tasks behind it move up (queue positions).
        leave_queue(redis, task_id)
    return 1


@dataclass
class RequeueOutcome:
    """What requeueing one queue's failed jobs did."""

    moved: int = 0
    # Left in the failed registry: their task is final (cancelled, completed or failed) and must not run.
    skipped_final: int = 0


def requeue_failed(redis: Redis, name: str, transitions: TaskTransitions) -> RequeueOutcome:
    """Move every job of the FailedJobRegistries of priority `name` (one per queue shard) back onto its queue
    (RQ's requeue), but the jobs of tasks already final."""
    outcome = RequeueOutcome()
    for shard in layout().shards():
        _requeue_failed(redis, shard_queue(redis, name, shard).failed_job_registry, transitions, outcome)
    return outcome


def _requeue_failed(
    redis: Redis, registry: FailedJobRegistry, transitions: TaskTransitions, outcome: RequeueOutcome
) -> None:
    job_ids = registry.get_job_ids()
    for job_id, job in zip(job_ids, Job.fetch_many(job_ids, redis, serializer=JSONSerializer), strict=True):
        task_id = _task_id(job)
        if task_id is not None and _unfinished_status(transitions.get(task_id, None)) is None:
            outcome.skipped_final += 1
            continue
        try:
            registry.requeue(job_id)
        except NoSuchJobError:
            # The job's hash expired or was deleted: nothing left to run.
            registry.remove(job_id)
        except InvalidJobOperation:
            # Someone else requeued or removed it meanwhile.
            continue
        else:
            outcome.moved += 1


def _confirmed(redis: Redis, names: list[str], target: str, requeue: bool) -> bool:
    targets = [shard_queue(redis, name, shard) for name in names for shard in layout().shards()]
    queued = sum(target.count for target in targets)
    scheduled = sum(target.scheduled_job_registry.get_job_count(cleanup=False) for target in targets)
    fate = "get a new job" if requeue else "are marked failed"
    print(
        f"This removes {queued} queued and {scheduled} scheduled jobs from {', '.join(names)}; "
        f"their unfinished tasks {fate}."
    )
    expected = "yes" if target == ALL else target
    try:
        answer = input(f"Type '{expected}' to confirm: ")
    except EOFError:
        answer = ""
    return answer.strip() == expected


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dispatcher_service.queue_admin", description="Inspect and repair the RQ queues."
    )
    commands = parser.add_subparsers(dest="command", metavar="{status,clear,requeue-failed,breakers}")
    status = commands.add_parser("status", help="jobs per queue and state (the default command)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    clear = commands.add_parser("clear", help="remove the queued and scheduled jobs of a queue")
    clear.add_argument("queue", choices=[*QUEUE_NAMES, ALL], metavar="QUEUE", help=QUEUE_HELP)
    clear.add_argument("--force", action="store_true", help="do not ask for confirmation")
    clear.add_argument("--requeue", action="store_true", help="enqueue unfinished tasks again instead of failing them")
    failed = commands.add_parser(
        "requeue-failed", help="put the jobs of RQ's failed registry back on their queue (never a final task's)"
    )
    failed.add_argument("queue", choices=[*QUEUE_NAMES, ALL], metavar="QUEUE", help=QUEUE_HELP)
    breakers = commands.add_parser("breakers", help="circuit breakers per provider instance and model")
    breakers.add_argument("--json", action="store_true", help="machine-readable output")
    breakers.add_argument("--reset", metavar="SCOPE", help="close this breaker and forget its window")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status is 0 on success, 1 when aborted or a store is unreachable, 2 on bad input."""
    args = _parser().parse_args(argv)
    # REDIS_URL / MONGO_URL from the environment, else from the local stack's .local/stack.env (make run).
    settings = load_settings(ServiceSettings, local_stack=True)
    try:
        redis = redis_client(settings)
    except ValueError as error:
        print(f"invalid configuration: REDIS_URL: {error}", file=sys.stderr)
        return 2
    try:
        transitions = TaskTransitions(
            MongoClient(**client_options(settings, "queue-admin")), settings.mongo_database, redis
        )
        if args.command == "breakers":
            if args.reset:
                reset_breaker(redis, args.reset)
                print(f"{args.reset}: closed")
                return 0
            breakers = breaker_statuses(redis)
            if args.json:
                print(json.dumps([{**vars(status), "state": status.state.value} for status in breakers]))
            else:
                lines = [format_breaker(status) for status in breakers]
                print("\n".join(lines) or "no circuit breaker has counted a call")
            return 0
        if args.command in (None, "status"):
            statuses = {name: queue_status(redis, name) for name in QUEUE_NAMES} | shard_statuses(redis)
            cancelled = cancelled_counts(transitions)
            if getattr(args, "json", False):
                print(json.dumps({**statuses, CANCELLED_TASKS: cancelled}))
            else:
                polls = poll_status(redis)
                print(format_status_table(statuses))
                print(f"polls of running upstream jobs: {polls['waiting']} waiting, {polls['due']} due")
                print(
                    f"cancelled tasks: {cancelled[CancelReason.USER]} by their user, "
                    f"{cancelled[CancelReason.DEADLINE]} past their deadline (a job of theirs still queued never runs)"
                )
                tripped = [status for status in breaker_statuses(redis) if status.state is not BreakerState.CLOSED]
                print(f"circuit breakers not closed: {len(tripped)}")
                for status in tripped:
                    print(f"  {format_breaker(status)}")
            return 0
        names = QUEUE_NAMES if args.queue == ALL else [args.queue]
        if args.command == "requeue-failed":
            for name in names:
                requeued = requeue_failed(redis, name, transitions)
                line = f"{name}: requeued {requeued.moved} failed jobs"
                if requeued.skipped_final:
                    line += f", skipped {requeued.skipped_final} whose task is final (cancelled, completed or failed)"
                print(line)
            return 0
        if not args.force and not _confirmed(redis, names, args.queue, args.requeue):
            print("aborted: nothing removed")
            return 1
        for name in names:
            outcome = clear_queue(redis, transitions, name, args.requeue)
            tasks = f"requeued {outcome.requeued_tasks}" if args.requeue else f"failed {outcome.failed_tasks}"
            line = f"{name}: removed {outcome.removed_jobs} jobs, {tasks} tasks"
            if outcome.kept_jobs:
                line += f", kept {outcome.kept_jobs} jobs whose task a worker holds (clear again later)"
            print(line)
        return 0
    except REDIS_DOWN as error:
        print(f"Redis at REDIS_URL is unavailable: {error}", file=sys.stderr)
    except ConnectionFailure as error:
        print(f"MongoDB at MONGO_URL is unavailable: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
