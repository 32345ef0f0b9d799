"""The dispatcher's floor: RQ's own per-job cost, running jobs that do nothing.

Enqueues JOBS no-op jobs (JSON serializer, as the dispatcher's) on a queue of
their own, then runs the same pool the dispatcher runs (rq's WorkerPool of N
SimpleWorkers) in burst mode until the queue is empty. The rate is the number
of jobs over the span from the first job's start to the last job's end, read
from the job records RQ keeps. No end-to-end pipeline of N workers can beat it.

    python -m bench.harness.rqfloor REDIS_URL WORKERS JOBS     (prints RQFLOOR_JSON {...})
"""

from __future__ import annotations

import json
import sys
import time

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker
from rq.worker_pool import WorkerPool

QUEUE = "bench-floor"


def noop(index: int) -> int:
    """The job: nothing."""
    return index


def measure(redis_url: str, workers: int, jobs: int) -> dict[str, float]:
    """Run `jobs` no-op jobs on `workers` SimpleWorkers; return the rate and the span it was measured over."""
    redis = Redis.from_url(redis_url)
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    queue.empty()
    with redis.pipeline() as pipe:
        enqueued = queue.enqueue_many(
            [Queue.prepare_data(noop, (index,), result_ttl=600) for index in range(jobs)], pipeline=pipe
        )
        pipe.execute()
    started = time.monotonic()
    WorkerPool(
        [QUEUE], connection=redis, num_workers=workers, worker_class=SimpleWorker, serializer=JSONSerializer
    ).start(burst=True, logging_level="WARNING")
    wall = time.monotonic() - started
    fetched = [
        job
        for job in Job.fetch_many([job.id for job in enqueued], connection=redis, serializer=JSONSerializer)
        if job is not None
    ]
    spans = [(job.started_at, job.ended_at) for job in fetched if job.started_at and job.ended_at]
    span = (max(ended for _, ended in spans) - min(started for started, _ in spans)).total_seconds()
    for job in fetched:
        job.delete()
    return {
        "workers": workers,
        "jobs": len(spans),
        "span_s": round(span, 2),
        "wall_s": round(wall, 2),
        "throughput_per_s": round(len(spans) / span, 1) if span else 0.0,
    }


def main() -> None:
    redis_url, workers, jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.stdout.write("RQFLOOR_JSON " + json.dumps(measure(redis_url, workers, jobs)) + "\n")


if __name__ == "__main__":
    main()
