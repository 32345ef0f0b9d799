"""The contract between the task service, which enqueues a task's first job, and the dispatcher, which
runs it: queue names and order, the job's function and lifetimes, and the keys written with each job.

RQ itself stays out of this module (every gRPC server imports aitask_common): the task service builds
its jobs in task_service/enqueue.py, the dispatcher its retries and polls in dispatcher_service/schedule.py.
Jobs carry only a task id and use RQ's JSON serializer: with pickle, anyone who can write to Redis could
run code in a worker.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from redis import Redis
from redis.client import Pipeline

from aitask_common.queue_shards import layout
from aitask_common.tasks import inflight_key


class Priority(StrEnum):
    """Queue names; workers drain them in declaration order."""

    CRITICAL = "critical"
    DEFAULT = "default"
    LOW = "low"


QUEUE_ORDER = [Priority.CRITICAL, Priority.DEFAULT, Priority.LOW]

# Referenced by name so the task service never imports dispatcher code.
PROCESS_TASK = "dispatcher_service.jobs.process_task"

# Finished job records are only bookkeeping: MongoDB holds the outcome. Each costs Redis about 6.4 KB while it lives
# (the job's hash and RQ's result stream), so at a steady rate Redis holds rate x this many seconds of them.
RESULT_TTL_SECONDS = 300
FAILURE_TTL_SECONDS = 7 * 24 * 3600

# The watch set belongs to the dispatcher's reconciler, but its keys are shared: a task's first job and
# its watch entry go out in one MULTI with the create, so no crash leaves a job unwatched or a watch entry
# without its job id. Sorted set of in-flight task ids scored by when their next job is due (epoch
# seconds): the reconciler re-enqueues a task that is long overdue, which covers a job lost between BLPOP
# and RQ's registry, a worker killed mid-task, and a Redis that restarted empty (the set is gone too, so
# nothing counts as scheduled).
# Each queue shard (aitask_common.queue_shards) has its own, in its slot: `watch_key(shard)`.
WATCH_KEY = "aitask:watch"
# Hash of in-flight task id -> id of its latest RQ job, so the reconciler can tell a job that merely waits
# in a long queue from a lost one.
WATCH_JOBS_KEY = "aitask:watch-jobs"


def watch_key(shard: int) -> str:
    return layout().key(WATCH_KEY, shard)


def watch_jobs_key(shard: int) -> str:
    return layout().key(WATCH_JOBS_KEY, shard)


def watched(redis: Redis) -> int:
    """Tasks in flight: the watch entries of every queue shard."""
    return sum(int(redis.zcard(watch_key(shard))) for shard in layout().shards())


def shard_of(task_id: str) -> int:
    """The queue shard holding the task's jobs and the keys that meet them."""
    return layout().shard_of(task_id)


def process_task_arguments(task_id: str, user_id: str | None) -> tuple[str, ...]:
    """The arguments of a task's PROCESS_TASK job: its id, and its user when known (the shard key its reads and
    writes carry on a sharded MongoDB; a job without it costs the worker one read by id)."""
    return (task_id,) if user_id is None else (task_id, user_id)


def job_options(task_id: str, trace: dict[str, str] | None = None) -> dict[str, Any]:
    """RQ `enqueue` keywords of every task's job, whoever enqueues it; `trace` is the trace context it carries
    (aitask_common.tracing), when tracing is on."""
    options = {"result_ttl": RESULT_TTL_SECONDS, "failure_ttl": FAILURE_TTL_SECONDS, "description": f"task {task_id}"}
    if trace:
        options["meta"] = {"trace": trace}
    return options


def watch_job(pipe: Pipeline, task_id: str, job_id: str, due: float) -> None:
    """Add the task's watch entry (when its job `job_id` is due, epoch seconds) to the MULTI that enqueues
    the job: both are stored, or neither."""
    shard = shard_of(task_id)
    pipe.zadd(watch_key(shard), {task_id: due})
    pipe.hset(watch_jobs_key(shard), task_id, job_id)


# Sorted set of task ids scored by when their next poll is due (epoch seconds), and the hash of their hints
# (dispatcher_service/schedule.py). Here because a cancel in the task service takes a video out of them at once.
POLLS_KEY = "aitask:polls"
POLL_HINTS_KEY = "aitask:poll-hints"


def polls_key(shard: int) -> str:
    return layout().key(POLLS_KEY, shard)


def poll_hints_key(shard: int) -> str:
    return layout().key(POLL_HINTS_KEY, shard)


# A task's owner while a step runs (dispatcher_service/lease.py); a cancel takes it too, when it is free.
LEASE_KEY_PREFIX = "aitask:lease:"

# Cancels (task_service/cancel.py). The job that cancels or deletes a cancelled video's upstream job, run by a
# dispatcher on the critical queue with (task_id, provider, model, upstream_job_id, first tried: epoch seconds).
CANCEL_UPSTREAM = "dispatcher_service.jobs.cancel_upstream"
# Set before a cancel's MongoDB write: a poll that was already running when the task left the poll set must
# not plan another one (schedule_poll checks it in the same round trip).
CANCELLED_KEY_PREFIX = "aitask:cancelled:"
# Long enough for any poll that was in flight at the cancel to have ended.
CANCELLED_MARK_SECONDS = 24 * 3600


def cancelled_key(task_id: str) -> str:
    """Redis key saying the task was cancelled (its value: the reason); in the task's shard, whose poll set it
    meets in one script."""
    return CANCELLED_KEY_PREFIX + layout().tag(shard_of(task_id)) + task_id


def forget_task(pipe: Pipeline | Any, task_id: str, user_id: str | None = None) -> None:
    """Add to `pipe` (sync or asyncio) the commands that drop a final (or gone) task from the watch set, the poll
    set and, when its user is known, from the user's in-flight set."""
    shard = shard_of(task_id)
    pipe.zrem(watch_key(shard), task_id)
    pipe.hdel(watch_jobs_key(shard), task_id)
    pipe.zrem(polls_key(shard), task_id)
    pipe.hdel(poll_hints_key(shard), task_id)
    if user_id is not None:
        pipe.srem(inflight_key(user_id), task_id)


# Queue positions, best effort and O(1) per read: every first job a create enqueues takes the next number
# of its priority's `enqueued` counter, kept with the priority under the task's sequence key; the first time
# the dispatcher picks up that task (whatever it then finds: pending, cancelled, deleted), it deletes the key
# and bumps the priority's `started` counter. A pending task's position is then its number less the started
# count, less one. Approximate: retries, re-checks and orphan re-runs share the queues without a number, and
# a Redis that restarts empty loses every number (the position is then unknown, not wrong). With several queue
# shards, each counts its own: a position is within the task's shard.
QUEUE_SEQUENCE_PREFIX = "aitask:queue-seq:"
STARTED_KEY_PREFIX = f"{QUEUE_SEQUENCE_PREFIX}started:"
# A task pending longer than this loses its number.
SEQUENCE_TTL_SECONDS = FAILURE_TTL_SECONDS

_TAKE_NUMBER = """
local number = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. number, 'EX', ARGV[2])
return number
"""
# KEYS: the task's entry, then the started counter of each priority, in QUEUE_ORDER (ARGV: their names); the
# entry says which to bump.
_LEAVE_QUEUE = """
local entry = redis.call('GET', KEYS[1])
if not entry then return 0 end
redis.call('DEL', KEYS[1])
local priority = string.match(entry, '^(%S+)')
for i = 1, #ARGV do
  if ARGV[i] == priority then redis.call('INCR', KEYS[i + 1]) end
end
return 1
"""


def enqueued_key(priority: Priority | str, shard: int) -> str:
    """Counter of first jobs a create enqueued at `priority` in the shard."""
    return layout().key(f"{QUEUE_SEQUENCE_PREFIX}enqueued:{priority}", shard)


def started_key(priority: Priority | str, shard: int) -> str:
    """Counter of numbered tasks at `priority` in the shard the dispatcher has picked up."""
    return layout().key(f"{STARTED_KEY_PREFIX}{priority}", shard)


def task_number_key(task_id: str) -> str:
    """The task's place in its queue while it waits for its first run: "<priority> <number>"."""
    return f"{QUEUE_SEQUENCE_PREFIX}task:{layout().tag(shard_of(task_id))}{task_id}"


def take_number(pipe: Pipeline, task_id: str, priority: Priority | str) -> None:
    """Number the task in its priority's queue, in the MULTI that enqueues its first job."""
    counter = enqueued_key(priority, shard_of(task_id))
    pipe.eval(_TAKE_NUMBER, 2, counter, task_number_key(task_id), str(priority), SEQUENCE_TTL_SECONDS)


def leave_queue(redis: Redis, task_id: str) -> None:
    """The dispatcher picked up the task's job: if it was numbered, it no longer waits (one Redis call)."""
    shard = shard_of(task_id)
    counters = [started_key(priority, shard) for priority in QUEUE_ORDER]
    redis.eval(_LEAVE_QUEUE, 1 + len(counters), task_number_key(task_id), *counters, *QUEUE_ORDER)


def queue_position(entry: bytes | str | None, started: bytes | str | None) -> int | None:
    """How many tasks of its priority are ahead of a numbered task, from its entry and the started count;
    None when it has no number (Redis lost it, or the task already ran)."""
    if entry is None:
        return None
    number = int(entry.split()[-1])
    return max(0, number - 1 - int(started or 0))
