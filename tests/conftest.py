"""Session-wide fixtures: one real stack (Redis, FerretDB, Envoy, services, simulator) on loopback, one lone
Redis for the fast tier's tests that need Redis and nothing else, and one in-process simulator for the tests of
the SDK clients (upstream_simulator, provider_volcengine).

Two tiers: every test that uses the `stack` fixture (or `datastores`, a stack's infrastructure) is marked
`stack`; long-running tests are marked `slow` by hand. `make test-fast` runs `-m "not stack and not slow"`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from pymongo.database import Database
from redis import Redis

from devstack.processes import Ports
from devstack.redis_cluster import RedisClusterServers
from devstack.stack import LocalStack, LoneRedis
from tests.upstream_simulator.helpers import ARK_KEY, OPENAI_KEY, VOLC_AK, VOLC_SK
from upstream_simulator import SimulatorSettings, SimulatorThread
from upstream_simulator.control import SimulatorControl

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

# Fixtures that start (part of) a whole LocalStack: a test using any of them, directly or not, is in the stack tier.
STACK_FIXTURES = frozenset({"stack", "datastores", "sharded_stack", "cluster_stack"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a LocalStack `stack`, so `-m "not stack"` leaves the fast tier."""
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole system, started once per test session and stopped at its end."""
    local = LocalStack(Ports.free(), tmp_path_factory.mktemp("stack"))
    try:
        local.start_all()
        yield local
    finally:
        local.stop_all()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoneRedis]:
    """One redis-server on a free loopback port, without the rest of the stack (fast tier).

    Tests share it: each keeps to its own database number or to uuid-named keys.
    """
    with LoneRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real Redis Cluster (3 masters, 3 replicas) on free loopback ports, shared by the tests that keep to keys
    of their own; a test that kills a node starts its own."""
    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@contextmanager
def emptied(server: LoneRedis, db: int) -> Iterator[Redis]:
    """A client of one of the lone server's databases, emptied before and after the test that uses it."""
    client = server.redis(db=db)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()


@pytest.fixture
def rest(stack: LocalStack) -> Iterator[httpx.Client]:
    """HTTP client on Envoy's REST port."""
    with stack.rest() as client:
        yield client


@pytest.fixture
def database(stack: LocalStack) -> Iterator[Database[dict[str, Any]]]:
    """A MongoDB database of the test's own on the stack's FerretDB, dropped after it."""
    client = stack.mongo()
    name = f"test_{uuid.uuid4().hex[:8]}"
    yield client[name]
    client.drop_database(name)
    client.close()


@pytest.fixture
def user_id() -> str:
    """A fresh user per test, so tests never see each other's tasks."""
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", autouse=True)
def _no_proxy() -> Iterator[None]:
    """Keep SDK traffic to 127.0.0.1 away from any proxy configured in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="session")
def sim(_no_proxy: None) -> Iterator[SimulatorThread]:
    """The simulator, on a free port, with 0.5 s video jobs and test credentials."""
    settings = SimulatorSettings(
        host="127.0.0.1",
        port=0,
        video_seconds=0.5,
        ark_api_key=ARK_KEY,
        openai_api_key=OPENAI_KEY,
        volc_access_key=VOLC_AK,
        volc_secret_key=VOLC_SK,
    )
    with SimulatorThread(settings) as running:
        yield running


@pytest.fixture(scope="session")
def control(sim: SimulatorThread) -> Iterator[SimulatorControl]:
    """Admin client of the shared simulator."""
    with SimulatorControl(sim.url) as client:
        yield client


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    """Every test starts without simulator faults: a test that set some and failed before clearing them must
    not fail the tests after it. Tests of the shared in-process simulator also start without stats or jobs;
    the stack's simulator keeps its stats, which its tests read as differences."""
    if "sim" in request.fixturenames:
        ctl: SimulatorControl = request.getfixturevalue("control")
        ctl.clear_faults()
        ctl.reset()
    if "stack" in request.fixturenames:
        local: LocalStack = request.getfixturevalue("stack")
        with local.sim() as stack_sim:
            stack_sim.clear_faults()


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_for_status(rest: httpx.Client, task_id: str, statuses: set[str], timeout: float = 30.0) -> dict[str, Any]:
    """Poll GET /task/result until the task reaches one of `statuses`; return its data."""

    def reached() -> dict[str, Any] | None:
        data = rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]
        return data if data["status"] in statuses else None

    return wait_until(reached, timeout)
