"""Outages of real processes under load, counted as clients and the upstream see them (issue 15).

Each test counts what matters to a user: per-user slots against the tasks really in flight, what the
upstream was paid (the simulator's counts of answered calls), the order work resumes in, and the errors
a client gets while a task service restarts.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from rq import Worker

from aitask_common.grpc_server import BALANCED_DRAIN_SECONDS
from aitask_common.tasks import inflight_key
from devstack.stack import LocalStack
from gateway.config import HEALTH_CHECK_INTERVAL_SECONDS, HEALTH_CHECK_TIMEOUT_SECONDS
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM, blocked_pops, restart_after_a_crash, stop_dispatcher
from upstream_simulator.control import SimulatorControl

IMAGES = "ark.images"
# The stack's RECONCILE_INTERVAL_SECONDS.
RECONCILE_INTERVAL = 1.0


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def create(rest: httpx.Client, user_id: str, prompt: str) -> str:
    # The user id in the prompt finds the task's upstream calls in the simulator's request log (`paid`).
    body = {"prompt": f"{prompt} {user_id}", "user_id": user_id, **SEEDREAM}
    response = rest.post("/api/v1/ai/image/task", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def paid(upstream: SimulatorControl, *users: str) -> int:
    """Image calls for `users`' tasks the upstream answered (and charged for)."""
    return sum(
        call["endpoint"] == IMAGES and call["status"] == 200 for user in users for call in upstream.requests(user)
    )


def count(stack: LocalStack, task_ids: list[str], status: str) -> int:
    return int(stack.tasks().count_documents({"_id": {"$in": task_ids}, "status": status}))


def slots(stack: LocalStack, user_id: str) -> set[str]:
    return {member.decode() for member in stack.redis().smembers(inflight_key(user_id))}


def in_flight(stack: LocalStack, user_id: str) -> set[str]:
    return {
        task["_id"]
        for status in ("pending", "processing")
        for task in stack.tasks().find({"user_id": user_id, "status": status}, {"_id": True})
    }


@pytest.fixture
def upstream(stack: LocalStack) -> Iterator[SimulatorControl]:
    """The stack's simulator (not the in-process one of the `sim` fixture), without faults afterwards."""
    with stack.sim() as control:
        yield control
        control.clear_faults()


@pytest.fixture
def dispatcher_log(stack: LocalStack) -> Iterator[Callable[[], str]]:
    """What the dispatcher logs from now on."""
    start = len(stack.log_text("dispatcher"))
    yield lambda: stack.log_text("dispatcher")[start:]


def test_a_redis_outage_leaks_no_slot_and_ends_no_worker(
    stack: LocalStack, rest: httpx.Client, upstream: SimulatorControl, dispatcher_log: Callable[[], str]
) -> None:
    users = [new_user() for _ in range(3)]
    # All four workers idle and waiting on the queues first: a test before this one (another Redis outage, a slow
    # upstream) may still hold one, and then fewer than four tasks would be mid-call below.
    wait_until(lambda: blocked_pops(stack.redis()) >= 4, timeout=30)
    upstream.set_faults(IMAGES, latency_s=2.0)
    task_ids = [create(rest, user, f"outage {n}") for n in range(4) for user in users]
    # The four workers are mid-call: their tasks finish while Redis is down.
    wait_until(lambda: count(stack, task_ids, "processing") == 4, timeout=15)
    stack.stop("redis")
    try:
        wait_until(lambda: count(stack, task_ids, "completed") == 4, timeout=15)
        finished_during_outage = [
            task["_id"] for task in stack.tasks().find({"_id": {"$in": task_ids}, "status": "completed"})
        ]
        time.sleep(1)
        upstream.clear_faults()
    finally:
        stack.start("redis")
    back = time.monotonic()
    # Within one reconcile pass every user's slots are exactly their tasks in flight.
    wait_until(lambda: all(slots(stack, user) == in_flight(stack, user) for user in users), timeout=3)
    healed = time.monotonic() - back
    for task_id in task_ids:
        assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=30)["status"] == "completed"
    assert all(slots(stack, user) == set() for user in users)
    assert paid(upstream, *users) == len(task_ids)
    log = dispatcher_log()
    # Those slots were left behind by the tasks that finished during the outage, and the reconciler freed them.
    assert log.count("task finished, but Redis is unreachable") == 4
    released = [line for line in log.splitlines() if "released an in-flight slot left behind" in line]
    assert sorted(task_id for task_id in finished_during_outage if any(task_id in line for line in released)) == sorted(
        finished_during_outage
    )
    # Workers waited the outage out instead of exiting and being restarted by the pool.
    assert "quitting" not in log and "is dead" not in log
    assert "Redis reachable again" in log
    # RQ's scheduler waited the outage out: a retry after backoff, a delayed job, comes due.
    upstream.set_faults(IMAGES, error_rate=1.0, error_status=500)
    retried = create(rest, users[0], "retried after the outage")
    wait_until(lambda: stack.tasks().find_one({"_id": retried, "status": "pending", "attempts": {"$gte": 1}}))
    upstream.clear_faults()
    # Within the longest backoff (2 s) and a scheduler tick, well before the reconciler would step in (5 s).
    assert wait_for_status(rest, retried, {"completed", "failed"}, timeout=4.5)["status"] == "completed"
    print(f"slots healed {healed:.1f} s after Redis returned; {len(task_ids)} tasks paid once each")


@pytest.fixture
def ten_workers(stack: LocalStack) -> Iterator[Any]:
    """Restart the dispatcher with ten workers (and the given environment); the usual one afterwards."""

    def restart(env: dict[str, str]) -> None:
        stop_dispatcher(stack)
        stack.start("dispatcher", extra_env={"WORKER_CONCURRENCY": "10", **env})
        # Every worker listening: tasks created now are claimed together, not some seconds later.
        redis = stack.redis()

        def idle_workers() -> int:
            return sum(worker.get_state() == "idle" for worker in Worker.all(connection=redis))

        wait_until(lambda: idle_workers() >= 10, timeout=30)

    try:
        yield restart
    finally:
        stop_dispatcher(stack)
        stack.start("dispatcher")


@pytest.mark.parametrize("write_seconds", ["30", "1"], ids=["write-retried", "write-kept-in-redis"])
def test_a_database_outage_with_ten_paid_calls_in_flight_pays_for_none_twice(
    stack: LocalStack,
    rest: httpx.Client,
    upstream: SimulatorControl,
    ten_workers: Any,
    dispatcher_log: Callable[[], str],
    write_seconds: str,
) -> None:
    # OUTCOME_WRITE_SECONDS 30 outlasts the outage (the write is retried); 1 does not (the result is kept in
    # Redis and the task's next run writes it).
    ten_workers({"OUTCOME_WRITE_SECONDS": write_seconds})
    user = new_user()
    # Calls long enough that all ten are still in flight when the outage starts, and an outage longer than a
    # call, so that every call ends inside it. SIGKILL: a graceful stop waits for clients, seconds in which
    # calls may end.
    upstream.set_faults(IMAGES, latency_s=8.0)
    task_ids = [create(rest, user, f"blip {n}") for n in range(10)]
    wait_until(lambda: count(stack, task_ids, "processing") == 10, timeout=30)
    stack.kill("ferretdb")
    try:
        time.sleep(11)
    finally:
        stack.start("ferretdb")
    results = [wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60) for task_id in task_ids]
    assert [result["status"] for result in results] == ["completed"] * 10
    assert [result["attempts"] for result in results] == [1] * 10
    log = dispatcher_log()
    if write_seconds == "30":
        assert "database unreachable; retrying the write" in log and "write is kept" not in log
    else:
        assert "write is kept in Redis" in log and "storing the write an earlier run kept" in log
    double_payments = paid(upstream, user) - len(task_ids)
    print(f"10 calls in flight across a 6 s database outage: {double_payments} double payments")
    assert double_payments == 0
    assert slots(stack, user) == set()


def test_orphans_of_a_killed_dispatcher_resume_before_the_backlog(
    stack: LocalStack, rest: httpx.Client, upstream: SimulatorControl
) -> None:
    upstream.set_faults(IMAGES, latency_s=3.0)
    orphans = [create(rest, new_user(), f"orphan {n}") for n in range(4)]
    wait_until(lambda: count(stack, orphans, "processing") == 4, timeout=15)
    stack.kill("dispatcher")
    try:
        # A backlog of 120 (users stay under the in-flight cap), ~15 s of work for four workers.
        upstream.set_faults(IMAGES, latency_s=0.5)
        users = [new_user() for _ in range(5)]
        backlog = [create(rest, users[n % 5], f"backlog {n}") for n in range(120)]
    finally:
        restart_after_a_crash(stack)
    for task_id in orphans + backlog:
        assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=90)["status"] == "completed"
    finished = {task["_id"]: task["updated"] for task in stack.tasks().find({"_id": {"$in": orphans + backlog}})}
    last_orphan = max(finished[task_id] for task_id in orphans)
    backlog_before = sum(finished[task_id] < last_orphan for task_id in backlog)
    print(f"the last orphan finished after {backlog_before} of {len(backlog)} backlog tasks")
    assert backlog_before < len(backlog) // 2


def test_envoy_notices_a_draining_task_service_before_it_stops_listening() -> None:
    assert BALANCED_DRAIN_SECONDS > HEALTH_CHECK_INTERVAL_SECONDS + HEALTH_CHECK_TIMEOUT_SECONDS


def creates_across(stack: LocalStack, restart: Any, clients: int = 4, per_client: int = 50) -> list[str]:
    """`clients` threads each send `per_client` creates, spread over ~10 s, while `restart()` runs after 2 s;
    the error of every create that did not succeed."""
    errors: list[str] = []
    run = uuid.uuid4().hex[:8]

    def client(number: int) -> None:
        with stack.rest() as rest:
            for n in range(per_client):
                # A user per ten creates stays under the in-flight cap.
                body = {"prompt": f"restart {n}", "user_id": f"user-{run}-{number}-{n // 10}", **SEEDREAM}
                try:
                    response = rest.post("/api/v1/ai/image/task", json=body)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text}")
                except httpx.HTTPError as error:
                    errors.append(repr(error))
                time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    restart()
    for thread in threads:
        thread.join()
    return errors


def test_no_create_fails_across_a_sigterm_restart_of_a_task_service(stack: LocalStack) -> None:
    def restart() -> None:
        stack.stop("task_service")  # SIGTERM, and waits for the process to exit
        stack.start("task_service")

    errors = creates_across(stack, restart)
    print(f"200 creates across a SIGTERM restart: {len(errors)} errors")
    assert errors == []


def test_a_sigkilled_task_service_fails_at_most_the_creates_in_flight_on_it(stack: LocalStack) -> None:
    def restart() -> None:
        stack.stop("task_service", signal.SIGKILL)
        stack.start("task_service")

    clients = 4
    errors = creates_across(stack, restart, clients=clients)
    print(f"200 creates across a SIGKILL restart: {len(errors)} errors")
    assert len(errors) <= clients, errors
