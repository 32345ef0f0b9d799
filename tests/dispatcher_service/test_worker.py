"""The dispatcher's RQ worker keeps RQ's bookkeeping of a job intact while sending less of it.

Jobs run in-process through `execute_job` (what RQ's work loop calls after a dequeue) on a lone Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from redis.connection import Connection
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from devstack.stack import LoneRedis
from dispatcher_service.schedule import enqueue_task
from dispatcher_service.worker import DispatcherWorker

REDIS_DB = 4  # the services use db 0, the batching tests db 1, the result cache db 2, the limit tests db 3
RESULT_TTL = 600


def shout(word: str) -> str:
    return word.upper()


def fail(word: str) -> str:
    raise ValueError(f"no {word}")


@pytest.fixture
def redis(redis_server: LoneRedis) -> Iterator[Redis]:
    connection = Redis(port=redis_server.port, db=REDIS_DB)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def run_one(redis: Redis, function: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Job, DispatcherWorker, int]:
    """Enqueue one job and execute it in a fresh worker; the job (re-read), the worker and how many
    round trips to Redis the execution took."""
    queue = Queue(f"q-{uuid.uuid4().hex[:8]}", connection=redis, serializer=JSONSerializer)
    job = queue.enqueue(f"{__name__}.{function}", "ok", result_ttl=RESULT_TTL)
    worker = DispatcherWorker([queue], connection=redis, serializer=JSONSerializer)
    worker.register_birth()
    dequeued = queue.dequeue_any([queue], None, connection=redis, serializer=JSONSerializer)
    assert dequeued is not None
    sends = 0
    send = Connection.send_packed_command

    def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    worker.execute_job(dequeued[0], queue)
    monkeypatch.undo()
    return Job.fetch(job.id, connection=redis, serializer=JSONSerializer), worker, sends


def test_a_finished_job_is_recorded_as_rq_records_it_in_three_round_trips(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, worker, round_trips = run_one(redis, "shout", monkeypatch)
    # The start, Job.perform's PERSIST, and the end: RQ's own SimpleWorker takes eight.
    assert round_trips == 3
    assert job.get_status() == JobStatus.FINISHED
    result = job.latest_result()
    assert result is not None and result.return_value == "OK"
    assert job.started_at is not None and job.ended_at is not None and job.worker_name == worker.name
    queue = Queue(job.origin, connection=redis, serializer=JSONSerializer)
    assert job.id in queue.finished_job_registry.get_job_ids()
    assert queue.started_job_registry.get_job_count(cleanup=False) == 0
    assert redis.zcard(f"rq:executions:{job.id}") == 0  # the execution record is gone
    assert 0 < redis.ttl(job.key) <= RESULT_TTL
    assert redis.hget(worker.key, "state") == b"idle"
    assert redis.hget(worker.key, "current_job") is None
    assert redis.hget(worker.key, "successful_job_count") == b"1"


def test_a_failed_job_goes_to_the_failed_registry_and_frees_the_worker(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, worker, _ = run_one(redis, "fail", monkeypatch)
    assert job.get_status() == JobStatus.FAILED
    result = job.latest_result()
    assert result is not None and "ValueError: no ok" in (result.exc_string or "")
    queue = Queue(job.origin, connection=redis, serializer=JSONSerializer)
    assert job.id in queue.failed_job_registry.get_job_ids()
    assert queue.started_job_registry.get_job_count(cleanup=False) == 0
    assert redis.zcard(f"rq:executions:{job.id}") == 0
    assert redis.hget(worker.key, "state") == b"idle"
    assert redis.hget(worker.key, "current_job") is None
    assert redis.hget(worker.key, "failed_job_count") == b"1"


def test_a_delayed_job_is_never_due_before_its_delay(redis_server: LoneRedis) -> None:
    # RQ's schedule keeps whole seconds: a 2.3 s delay (an upstream's Retry-After) must not become 2 s.
    connection = redis_server.redis(db=REDIS_DB)
    for delay in (2.3, 0.01, 4.999):
        asked_at = time.time()
        job = enqueue_task(connection, f"task-{uuid.uuid4().hex}", "default", timedelta(seconds=delay))
        registry = ScheduledJobRegistry("default", connection=connection, serializer=JSONSerializer)
        due = connection.zscore(registry.key, job.id)
        assert due is not None and asked_at + delay <= due < asked_at + delay + 1.1
