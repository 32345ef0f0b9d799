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

from redis.client import Pipeline


class Priority(StrEnum):
    """Queue names; workers drain them in declaration order."""

    CRITICAL = "critical"
    DEFAULT = "default"
    LOW = "low"


QUEUE_ORDER = [Priority.CRITICAL, Priority.DEFAULT, Priority.LOW]

# Referenced by name so the task service never imports dispatcher code.
PROCESS_TASK = "dispatcher_service.jobs.process_task"

# Finished job records are only bookkeeping: MongoDB holds the outcome.
RESULT_TTL_SECONDS = 3600
FAILURE_TTL_SECONDS = 7 * 24 * 3600

# The watch set belongs to the dispatcher's reconciler, but its keys are shared: a task's first job and
# its watch entry go out in one MULTI with the create, so no crash leaves a job unwatched or a watch entry
# without its job id. Sorted set of in-flight task ids scored by when their next job is due (epoch
# seconds): the reconciler re-enqueues a task that is long overdue, which covers a job lost between BLPOP
# and RQ's registry, a worker killed mid-task, and a Redis that restarted empty (the set is gone too, so
# nothing counts as scheduled).
WATCH_KEY = "aitask:watch"
# Hash of in-flight task id -> id of its latest RQ job, so the reconciler can tell a job that merely waits
# in a long queue from a lost one.
WATCH_JOBS_KEY = "aitask:watch-jobs"


def job_options(task_id: str) -> dict[str, Any]:
    """RQ `enqueue` keywords of every task's job, whoever enqueues it."""
    return {"result_ttl": RESULT_TTL_SECONDS, "failure_ttl": FAILURE_TTL_SECONDS, "description": f"task {task_id}"}


def watch_job(pipe: Pipeline, task_id: str, job_id: str, due: float) -> None:
    """Add the task's watch entry (when its job `job_id` is due, epoch seconds) to the MULTI that enqueues
    the job: both are stored, or neither."""
    pipe.zadd(WATCH_KEY, {task_id: due})
    pipe.hset(WATCH_JOBS_KEY, task_id, job_id)
