"""What operators read and set on the RQ queues: jobs per state, the oldest waiting job's age, and which
priorities are paused. Shared by the task service's AdminService and the dispatcher's queue tool, metrics and
workers (which take no work from a paused priority: dispatcher_service/worker.py).

This module imports RQ, so unlike aitask_common.queues only those two services import it.
"""

from __future__ import annotations

from typing import Any, Final

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.utils import now, str_to_date

from aitask_common.queue_shards import layout
from aitask_common.rq_shards import shard_queue

# Set of the priorities (queue names) the workers take no work from.
PAUSED_QUEUES_KEY: Final = "aitask:queues:paused"
STATES: Final = ("queued", "started", "scheduled", "failed", "finished", "deferred")
OLDEST_AGE: Final = "oldest_queued_age_seconds"
# What a frequent reader (a scrape, the console) reads of each queue for its oldest age: the enqueue times of this
# many jobs at its head, not all.
AGE_SAMPLE_JOBS: Final = 100


def queue_status(redis: Redis, target: Queue, age_sample: int = -1) -> dict[str, Any]:
    """Job counts per state for one queue, and the age in seconds of its oldest queued job (None if empty), from
    the first `age_sample` jobs (all: -1). Read-only: registries are counted without RQ's cleanup, which would
    move abandoned jobs."""
    registries = {
        "started": target.started_job_registry,
        "scheduled": target.scheduled_job_registry,
        "failed": target.failed_job_registry,
        "finished": target.finished_job_registry,
        "deferred": target.deferred_job_registry,
    }
    counts: dict[str, Any] = {"queued": target.count}
    counts |= {state: registry.get_job_count(cleanup=False) for state, registry in registries.items()}
    counts[OLDEST_AGE] = oldest_queued_age(redis, target, age_sample)
    return counts


def priority_status(redis: Redis, priority: str, age_sample: int = -1) -> dict[str, Any]:
    """`queue_status` of a priority's queues, summed over the queue shards; the oldest age is the oldest of any."""
    per_shard = [queue_status(redis, shard_queue(redis, priority, shard), age_sample) for shard in layout().shards()]
    if len(per_shard) == 1:
        return per_shard[0]
    total = {state: sum(counts[state] for counts in per_shard) for state in per_shard[0] if state != OLDEST_AGE}
    ages = [counts[OLDEST_AGE] for counts in per_shard if counts[OLDEST_AGE] is not None]
    return total | {OLDEST_AGE: max(ages, default=None)}


def oldest_queued_age(redis: Redis, target: Queue, first: int = -1) -> float | None:
    """Seconds the oldest of the queue's first `first` jobs (all: -1) has waited; None if empty."""
    # Every enqueue time, not just the head's: a job put at the front would make the head look young.
    job_ids = target.get_job_ids(0, first)
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "enqueued_at")
        stamps = pipe.execute()
    enqueued = [str_to_date(stamp) for stamp in stamps if stamp]
    return round((now() - min(enqueued)).total_seconds(), 3) if enqueued else None


def paused_queues(redis: Redis) -> set[str]:
    """The priorities the workers take no work from."""
    return {
        member.decode() if isinstance(member, bytes) else str(member) for member in redis.smembers(PAUSED_QUEUES_KEY)
    }
