"""A whole aitask stack on free loopback ports, supervised from Python: the tests' `stack` fixture and bench.

`LocalStack` starts the processes `devstack.processes` defines (the ones `make run` hands to honcho),
waits until each answers, and can stop, kill and restart any of them. Its environment carries the
tests' short timings; bench/harness replaces it with `make run`'s.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, cast

import grpc
import httpx
from pymongo import MongoClient
from pymongo.collection import Collection
from redis import Redis
from redis.exceptions import RedisError

from aitask.v1 import task_service_pb2_grpc
from aitask_common.redis_cluster import cluster_client
from aitask_common.registry import read_instances
from devstack.postgres import binary as psql_binary
from devstack.processes import (
    ROOT,
    Ports,
    Process,
    accepts,
    base_environment,
    free_port,
    infrastructure,
    redis_server,
    service_environment,
    services,
)
from upstream_simulator.control import SimulatorControl

STARTUP_SECONDS = 60.0
# The user of the admin key every client below sends unless told otherwise.
ADMIN_USER = "stack-admin"


class LocalStack:
    """Owns every process of one stack; individual processes can be stopped, killed and restarted."""

    def __init__(self, ports: Ports, workdir: Path, workers: int = 4) -> None:
        self.ports = ports
        self.workdir = workdir
        # Outside pytest's private (0700) temp tree: PostgreSQL runs as its own user.
        self.data_dir = Path(tempfile.mkdtemp(prefix="aitask-stack-"))
        self.data_dir.chmod(0o755)
        # collection -> the PostgreSQL table FerretDB keeps it in (ferretdb_table).
        self._ferretdb_tables: dict[str, str] = {}
        self.env = (
            base_environment()
            | service_environment(ports, workdir / "logs", {})
            | {
                "ENVIRONMENT": "test",
                "LOG_LEVEL": "INFO",
                # Short timings so retries, polls and failover happen within a test's patience.
                "RETRY_BASE_SECONDS": "0.2",
                "RETRY_MAX_SECONDS": "2",
                "POLL_INITIAL_SECONDS": "0.3",
                "POLL_MAX_SECONDS": "1",
                "PROVIDER_RECHECK_SECONDS": "0.5",
                "REGISTRY_TTL_SECONDS": "3",
                "AI_TIMEOUT": "20",
                "SIMULATOR_VIDEO_SECONDS": "1",
                "LEASE_SECONDS": "4",
                "RECONCILE_INTERVAL_SECONDS": "1",
                "RECONCILE_MIN_AGE_SECONDS": "2",
                "WATCH_GRACE_SECONDS": "5",
                # Webhook retries within seconds, not hours.
                "WEBHOOK_RETRY_SCHEDULE": "[0.5, 1, 1, 1.5, 2, 2, 3]",
                "WEBHOOK_TIMEOUT_SECONDS": "3",
                "WEBHOOK_POLL_SECONDS": "0.2",
                "WEBHOOK_SWEEP_SECONDS": "5",
                # Auth is on (ENVIRONMENT=test); a short key cache so revocation shows within a test's patience.
                "API_KEY_CACHE_SECONDS": "2",
                "MAX_INFLIGHT_TASKS_PER_USER": "30",
                # Credits enough for any test's user; the billing tests make users short of credit themselves.
                "STARTING_CREDITS": "1000000000",
                # First come, first served, so a test sees every job it created in the queue; the fair-share
                # tests turn it on (tests/e2e/test_resilience.py).
                "FAIR_SHARE_DEPTH": "0",
                # The faults one test injects must not open breakers for the tests after it (they run in random
                # order, minutes apart at most); the breaker tests start a dispatcher with quick ones of their own.
                "BREAKER_MIN_CALLS": "100000",
                "BREAKER_MODEL_MIN_CALLS": "100000",
                # Throwaway data: durability would only slow the tests down.
                "POSTGRES_EXTRA_ARGS": "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            }
        )
        self.definitions = {process.name: process for process in infrastructure(ports, self.data_dir)}
        self.definitions |= {process.name: process for process in services(ports, workers)}
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        # Made by start_all (through the CLI, as an operator would); no rate limit, acts for any user.
        self.admin_key = ""

    # --- process control -------------------------------------------------
    def restart_redis_empty(self) -> None:
        """Stop Redis, delete its data (the append-only file) and start it again: a Redis that lost everything."""
        self.stop("redis")
        shutil.rmtree(self.data_dir / "redis")
        (self.data_dir / "redis").mkdir()
        self.start("redis")

    def start(self, name: str, extra_env: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start one process (and wait until it answers, unless told not to)."""
        running = self.running.get(name)
        if running is not None and running.poll() is None:
            # A second copy would be orphaned here, left working behind every later stop of the name.
            raise RuntimeError(f"{name} is already running (pid {running.pid})")
        process = self.definitions[name]
        log = self._logs.get(name) or (self.workdir / f"{name}.log").open("ab")
        self._logs[name] = log
        self.running[name] = subprocess.Popen(
            process.argv,
            cwd=ROOT,
            env=self.env | process.env | (extra_env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(process)

    def _define_copy(self, base_name: str, name: str, port_variable: str, env: dict[str, str] | None = None) -> Process:
        """Define `name` as a copy of process `base_name` listening on a fresh port (set in `port_variable`), with
        `env` on top; start it with `start(name)`."""
        base = self.definitions[base_name]
        port = free_port()
        self.definitions[name] = Process(name, base.argv, base.env | {port_variable: str(port)} | (env or {}), port)
        return self.definitions[name]

    def add_provider_instance(self, provider_process: str, name: str) -> Process:
        """Define one more instance of a provider on fresh ports (start it with `start(name)`)."""
        port_variable = {"provider_volcengine": "VOLCENGINE_PORT", "provider_openai": "OPENAI_PROVIDER_PORT"}
        metrics = {"METRICS_PORT": str(free_port())}
        return self._define_copy(provider_process, name, port_variable[provider_process], metrics)

    def add_dispatcher_instance(self, name: str, workers: int) -> Process:
        """Define one more dispatcher (a replica, as Kubernetes runs them) with `workers` workers on a fresh metrics
        port (start it with `start(name)`)."""
        return self._define_copy("dispatcher", name, "METRICS_PORT", {"WORKER_CONCURRENCY": str(workers)})

    def add_simulator_instance(self, name: str) -> Process:
        """Define a second upstream simulator on a fresh port (start it with `start(name)`): point one provider
        instance at it (ARK_BASE_URL) to give that instance an upstream of its own, down until started."""
        return self._define_copy("simulator", name, "SIMULATOR_PORT")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal a process and wait for it to exit; SIGKILL its whole group after `timeout`.

        SIGKILL goes to the whole group at once (a crash takes the forked workers
        too); other signals go to the main process only, as Kubernetes sends them:
        a second signal to the dispatcher's workers would turn their warm shutdown cold.
        """
        popen = self.running.pop(name, None)
        if popen is None or popen.poll() is not None:
            return
        if sig == signal.SIGKILL:
            os.killpg(popen.pid, sig)
        else:
            popen.send_signal(sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
        _wait_for_group_exit(popen.pid)

    def terminate_main_process(self, name: str, timeout: float = 60.0) -> int:
        """SIGTERM only the process itself (as Kubernetes does), wait for it to exit, return its code."""
        popen = self.running.pop(name)
        popen.send_signal(signal.SIGTERM)
        return popen.wait(timeout)

    def kill(self, name: str) -> None:
        """SIGKILL a process group, as a crash would."""
        self.stop(name, signal.SIGKILL)

    def start_all(self) -> None:
        """Infrastructure first, then the services."""
        for name in self.definitions:
            self.start(name)
        self.admin_key = self.create_api_key(ADMIN_USER, "admin", name="tests", rate_limit=0)
        self.wait_for_rest()

    def stop_all(self) -> None:
        """Stop services before the infrastructure they use."""
        for name in reversed(list(self.running)):
            self.stop(name)
        for log in self._logs.values():
            log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_text(self, name: str) -> str:
        """Everything a process wrote so far."""
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    # --- readiness -------------------------------------------------------
    def wait_ready(self, process: Process) -> None:
        """Block until the process accepts connections (providers: until registered)."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            popen = self.running[process.name]
            if popen.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited with {popen.returncode}:\n{self.log_text(process.name)[-3000:]}"
                )
            accepting = process.port is None or accepts(process.port)
            if process.name == "redis":
                accepting = accepting and redis_loaded(process.port)
            if accepting and (not process.name.startswith("provider_") or self._registered(process.port)):
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{process.name} not ready after {STARTUP_SECONDS} s:\n{self.log_text(process.name)[-3000:]}"
        )

    def _registered(self, port: int | None) -> bool:
        return any(instance.address.endswith(f":{port}") for instance in read_instances(self.redis()))

    def wait_for_rest(self) -> None:
        """Block until a REST call travels Envoy → task service → MongoDB."""
        deadline = time.monotonic() + STARTUP_SECONDS
        with self.rest() as client:
            while time.monotonic() < deadline:
                try:
                    if client.get("/api/v1/ai/tasks", params={"user_id": "probe"}).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError("REST path through Envoy never became ready:\n" + self.log_text("envoy")[-3000:])

    # --- API keys (through the operator's CLI) ----------------------------
    def api_keys_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `python -m task_service.api_keys ARGS` against this stack's database."""
        return subprocess.run(
            [sys.executable, "-m", "task_service.api_keys", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def create_api_key(self, user_id: str, role: str = "user", name: str = "", rate_limit: int | None = None) -> str:
        """A new API key for `user_id`, as the CLI prints it."""
        args = ["create", "--user-id", user_id, "--role", role, "--name", name]
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        created = self.api_keys_cli(*args)
        if created.returncode != 0:
            raise RuntimeError(f"api_keys create failed: {created.stderr}")
        return created.stdout.strip()

    # --- clients ---------------------------------------------------------
    def rest(self, api_key: str | None = None) -> httpx.Client:
        """An HTTP client on Envoy's REST port sending `api_key` (default: the admin key; "" sends none)."""
        key = self.admin_key if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.ports.envoy}", headers=headers, timeout=30, trust_env=False
        )

    def grpc_channel(self, via_envoy: bool = True) -> grpc.Channel:
        """A gRPC channel to the task service, through Envoy by default (no API key: health, reflection)."""
        port = self.ports.envoy if via_envoy else self.ports.task_service
        return grpc.insecure_channel(f"127.0.0.1:{port}")

    def task_stub(self, via_envoy: bool = True, api_key: str | None = None) -> task_service_pb2_grpc.TaskServiceStub:
        """A TaskService stub sending `api_key` (default: the admin key; "" sends none)."""
        key = self.admin_key if api_key is None else api_key
        channel = self.grpc_channel(via_envoy)
        if key:
            channel = grpc.intercept_channel(channel, _Metadata((("authorization", f"Bearer {key}"),)))
        return task_service_pb2_grpc.TaskServiceStub(channel)

    def sim(self) -> SimulatorControl:
        """The upstream simulator's admin API."""
        return SimulatorControl(f"http://127.0.0.1:{self.ports.simulator}")

    def redis(self) -> Redis:
        """A client on the stack's Redis: its Redis Cluster when REDIS_CLUSTER_URLS is set (keys are then named as
        on a cluster in this process too: aitask_common.queue_shards.configure)."""
        if urls := self.env.get("REDIS_CLUSTER_URLS"):
            return cast(Redis, cluster_client(urls, socket_timeout=30))
        return Redis(port=self.ports.redis)

    def mongo(self) -> MongoClient[dict[str, Any]]:
        """A client on the stack's FerretDB."""
        return MongoClient(self.env["MONGO_URL"], tz_aware=True)

    @property
    def database(self) -> str:
        """The services' database (MONGO_DATABASE)."""
        return self.env.get("MONGO_DATABASE", "aitask")

    def tasks(self) -> Collection[dict[str, Any]]:
        """The `tasks` collection."""
        return self.mongo()[self.database]["tasks"]

    def psql(self, query: str) -> str:
        """What psql prints for `query` on the stack's PostgreSQL, under FerretDB (unaligned, tuples only)."""
        argv = [psql_binary("psql"), "-h", "127.0.0.1", "-p", str(self.ports.postgres), "-U", "postgres", "-Atc", query]
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    def ferretdb_table(self, collection: str) -> str:
        """The PostgreSQL table FerretDB keeps `collection` in (in the schema named after the database); its name is
        derived from the collection's, so it is looked up once."""
        if table := self._ferretdb_tables.get(collection):
            return table
        metadata = f"{self.database}._ferretdb_database_metadata"
        table = self.psql(f"SELECT _jsonb->>'table' FROM {metadata} WHERE _jsonb->>'_id' = '{collection}'")
        if table:  # "" while the collection is not created yet: asked again next time
            self._ferretdb_tables[collection] = table
        return table

    def task_count(self) -> int:
        """How many tasks the store holds, counted by PostgreSQL: FerretDB's own count reads and decodes every
        document (half a second for a thousand tasks, which made each fuzz example cost a second)."""
        return int(self.psql(f'SELECT count(*) FROM {self.database}."{self.ferretdb_table("tasks")}"'))


def redis_loaded(port: int | None) -> bool:
    """Whether the Redis on `port` answers commands: one restarted on a large append-only file accepts connections
    while it loads it, and answers LOADING (which the services take for Redis down) until done."""
    try:
        with Redis(port=port or 0, socket_timeout=1) as redis:
            return bool(redis.ping())
    except RedisError:
        return False


class LoneRedis:
    """One redis-server on a free loopback port and nothing else: for tests that need a real Redis only.

    `with LoneRedis(data_dir) as server:` starts it and waits until it accepts connections.
    """

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.process = redis_server(self.port, data_dir)
        self._log_path = data_dir / "redis.log"
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def redis(self, db: int = 0) -> Redis:
        """A client on database `db`."""
        return Redis(port=self.port, db=db)

    def __enter__(self) -> LoneRedis:
        with self._log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.process.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not (accepts(self.port) and redis_loaded(self.port)):
            if self._popen.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"redis-server did not start:\n{self._log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds fixed metadata (the API key) to every call of a channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _with_metadata(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self.metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_metadata(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_metadata(details), request)


def _wait_for_group_exit(group: int, timeout: float = 10.0) -> None:
    """Wait until no live process of the group is left (a stopped pool's workers exit a moment later)."""
    deadline = time.monotonic() + timeout
    while _live_group_members(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _live_group_members(group):
        os.killpg(group, signal.SIGKILL)


def _live_group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[0] is the state (Z: a zombie, already dead), fields[2] the process group.
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry.name))
    return members
