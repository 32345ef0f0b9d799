"""The RQ scheduler a dispatcher worker starts (it moves delayed jobs, retries after their backoff, to their queues)
rides out a Redis outage: due jobs move again within a second of Redis's return, with no worker restarting it. And
it starts whatever the worker's other threads are doing in gRPC.

RQ's own scheduler dies on its first failed command once redis-py's retries run out, and until a worker notices,
retries wait for the reconciler. Each test runs a redis-server of its own (its data kept on disk across a restart).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis import Redis
from rq.queue import Queue
from rq.serializers import JSONSerializer

from devstack.stack import LoneRedis
from dispatcher_service.scheduler import OutageTolerantScheduler, SchedulerProcess
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import wait_until

# Longer than redis-py's default retries take to give up on a refused connection, most of the time.
OUTAGE_SECONDS = 4.0
STARTS_WHILE_CALLING = 5


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoneRedis]:
    with LoneRedis(tmp_path) as lone:
        yield lone


def scheduler_of(server: LoneRedis, queue_name: str) -> tuple[Queue, OutageTolerantScheduler]:
    """A queue and a scheduler of it, made as a worker makes them (a client with redis-py's defaults)."""
    redis = Redis.from_url(server.url, socket_timeout=5)
    queue = Queue(queue_name, connection=redis, serializer=JSONSerializer)
    settings = DispatcherSettings(redis_url=server.url, log_file=False)
    scheduler = OutageTolerantScheduler([queue], connection=redis, serializer=JSONSerializer, settings=settings)
    assert scheduler.acquire_locks() == {queue_name}
    return queue, scheduler


def wait_for_first_round(server: LoneRedis, scheduler: OutageTolerantScheduler, process: SchedulerProcess) -> None:
    """Until the scheduler's first heartbeat, or its death."""
    wait_until(lambda: server.redis().hget(scheduler.key, "last_heartbeat") or not process.is_alive(), timeout=20)


@pytest.fixture
def scheduling(server: LoneRedis) -> Iterator[tuple[Queue, OutageTolerantScheduler, SchedulerProcess]]:
    """A queue and a running scheduler of it."""
    queue, scheduler = scheduler_of(server, "scheduled")
    process = scheduler.start()
    try:
        wait_for_first_round(server, scheduler, process)
        assert process.is_alive()
        yield queue, scheduler, process
    finally:
        if process.is_alive():
            process.kill()
        process.join(10)


def outage(server: LoneRedis) -> None:
    server.__exit__()
    time.sleep(OUTAGE_SECONDS)
    server.__enter__()


def test_a_job_due_after_an_outage_is_moved_within_a_second_by_the_same_scheduler(
    server: LoneRedis, scheduling: tuple[Queue, OutageTolerantScheduler, SchedulerProcess]
) -> None:
    queue, scheduler, process = scheduling
    outage(server)
    back = time.monotonic()
    job = queue.enqueue_at(datetime.now(UTC), "dispatcher_service.jobs.process_task", "task-1")
    wait_until(lambda: job.id in queue.get_job_ids(), timeout=3)
    moved = time.monotonic() - back
    assert moved < 1.5, f"the due job was moved {moved:.1f} s after Redis returned"
    assert process.is_alive()
    # It still holds its lock, so no other worker's scheduler starts for the queue.
    assert server.redis().get(scheduler.get_locking_key("scheduled")) == scheduler.name.encode()


def test_a_scheduler_waiting_for_redis_stops_on_sigterm(
    server: LoneRedis, scheduling: tuple[Queue, OutageTolerantScheduler, SchedulerProcess]
) -> None:
    _, _, process = scheduling
    server.__exit__()
    try:
        time.sleep(1)
        assert process.is_alive(), "the scheduler died of the outage"
        os.kill(process.pid, signal.SIGTERM)
        process.join(3)
        assert process.exitcode == 0
    finally:
        server.__enter__()


def test_a_scheduler_started_while_another_thread_is_inside_grpc_runs(server: LoneRedis) -> None:
    # A worker's poller and its channels to the providers call into gRPC from other threads; a process forked
    # meanwhile could crash at once (SIGSEGV), as RQ's forked scheduler did within three starts here.
    health_server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), health_server)
    port = health_server.add_insecure_port("127.0.0.1:0")
    health_server.start()
    calling = threading.Event()
    calling.set()

    def call_through_new_channels() -> None:
        while calling.is_set():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=5)
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    caller = threading.Thread(target=call_through_new_channels, daemon=True)
    caller.start()
    try:
        for start in range(STARTS_WHILE_CALLING):
            _, scheduler = scheduler_of(server, f"calling-{start}")
            process = scheduler.start()
            try:
                wait_for_first_round(server, scheduler, process)
                assert process.is_alive(), f"start {start}: the scheduler died with exit code {process.exitcode}"
            finally:
                process.kill()
                process.join(10)
    finally:
        calling.clear()
        caller.join(10)
        health_server.stop(0)
