"""One benchmark stack: devstack.stack.LocalStack with `make run`'s settings, plus process monitoring."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from redis import Redis
from rq import Worker

from aitask_common.queue_shards import layout
from aitask_common.rq_shards import shard_queue
from bench.harness.procs import ProcessMonitor
from devstack.processes import Ports, base_environment, service_environment
from devstack.stack import LocalStack

WORKERS_READY_SECONDS = 60.0
# `BENCH_MONGO_URL=mongodb://… make bench` runs against that MongoDB, in EXTERNAL_DATABASE.
EXTERNAL_MONGO_VARIABLE = "BENCH_MONGO_URL"
EXTERNAL_DATABASE = "aitask_bench"
# What drivers and the harness send to keep a connection, not operations a task costs: left out of FerretDB's counts.
CONNECTION_COMMANDS = frozenset(
    {"hello", "isMaster", "ismaster", "ping", "buildInfo", "buildinfo", "serverStatus", "endSessions", "getParameter"}
)
DISPATCHER_STOP_SECONDS = 5.0
# Envoy counters kept per scenario: responses by class, and the reasons Envoy answers by itself.
ENVOY_COUNTERS = (
    r"^(http\.ingress\.downstream_rq_[1-5]xx|cluster\.task_service\.(upstream_rq_pending_overflow|upstream_cx_overflow"
    r"|upstream_rq_timeout|upstream_rq_503|upstream_rq_retry_overflow|upstream_cx_connect_fail|upstream_rq_reset))$"
)


def make_run_environment(local: LocalStack) -> dict[str, str]:
    """LocalStack's environment without its test shortcuts (short timings, ENVIRONMENT=test, small caps).

    What is left is what `make run` sets (base_environment() | service_environment(...)), with
    LocalStack's values for those variables (its ports and log directory), plus POSTGRES_EXTRA_ARGS
    (fsync off: the data is thrown away).
    """
    make_run = base_environment() | service_environment(local.ports, local.workdir, {})
    return {name: local.env[name] for name in make_run if name in local.env} | {
        "POSTGRES_EXTRA_ARGS": local.env.get("POSTGRES_EXTRA_ARGS", "")
    }


def store_operations(server_status: dict[str, Any]) -> dict[str, int]:
    """Operations by kind from a serverStatus reply: MongoDB's `opcounters`, or FerretDB's commands (it keeps no
    opcounters) less the connection's own."""
    if counters := server_status.get("opcounters"):
        return {name: int(value) for name, value in counters.items()}
    commands = server_status.get("metrics", {}).get("commands", {})
    return {name: int(entry["total"]) for name, entry in commands.items() if name not in CONNECTION_COMMANDS}


class BenchStack:
    """A whole stack on free loopback ports for one scenario; `with BenchStack(...) as stack:`."""

    def __init__(self, label: str, workers: int, env: dict[str, str] | None = None) -> None:
        self.label = label
        self.workdir = Path(tempfile.mkdtemp(prefix=f"aitask-bench-{label}-"))
        self.local = LocalStack(Ports.free(), self.workdir, workers=workers)
        self.local.env = make_run_environment(self.local) | {"LOG_LEVEL": "WARNING"} | (env or {})
        if mongo_url := os.environ.get(EXTERNAL_MONGO_VARIABLE):
            # A MongoDB the operator gives, in place of FerretDB: the bench's data goes to a database of its own
            # there (the scenarios drop and refill its collections).
            self.local.env |= {"MONGO_URL": mongo_url, "MONGO_DATABASE": EXTERNAL_DATABASE}
            for name in ("postgres", "ferretdb"):
                del self.local.definitions[name]
        self.workers = workers
        self.load_pids: dict[str, int] = {}
        self.monitor = ProcessMonitor(self.roots)

    @property
    def ports(self) -> Ports:
        return self.local.ports

    def roots(self) -> dict[str, int]:
        """Every running stack process by name, plus the load generators as `load:<tool>`."""
        # Copies: the main thread starts and stops processes while the monitor thread reads these.
        roots = {name: popen.pid for name, popen in list(self.local.running.items()) if popen.poll() is None}
        return roots | {f"load:{name}": pid for name, pid in list(self.load_pids.items())}

    def __enter__(self) -> BenchStack:
        started = time.monotonic()
        try:
            self.local.start_all()
            self.wait_for_workers(self.workers)
        except BaseException:
            self.close()
            raise
        self.monitor.start()
        print(f"  stack up in {time.monotonic() - started:.1f} s", flush=True)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.monitor.stop()
        self.close()
        if kind is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"  process logs kept in {self.workdir}", flush=True)

    def close(self) -> None:
        """Stop every process (LocalStack removes its data directory)."""
        self.stop_dispatcher()
        self.local.stop_all()

    def redis(self) -> Redis:
        return self.local.redis()

    def stop_dispatcher(self) -> None:
        """SIGTERM the worker pool (a busy worker finishes its job first), SIGKILL what is left after a few seconds.

        Idle workers blocked in BLPOP often ignore the SIGTERM until LocalStack's 30 s timeout;
        by the time the SIGKILL comes, every busy worker has finished its job.
        """
        self.local.stop("dispatcher", timeout=DISPATCHER_STOP_SECONDS)

    def start_dispatcher(self, workers: int) -> None:
        """Start the worker pool with `workers` workers and wait until all are registered in RQ."""
        self.workers = workers
        self.local.start("dispatcher", extra_env={"WORKER_CONCURRENCY": str(workers)})
        self.wait_for_workers(workers)

    def wait_for_workers(self, count: int) -> None:
        deadline = time.monotonic() + WORKERS_READY_SECONDS
        with self.redis() as redis:
            while time.monotonic() < deadline:
                # Workers by the queue they serve: each shard's register under its tag (aitask_common.rq_shards).
                if sum(Worker.count(queue=shard_queue(redis, "default", k)) for k in layout().shards()) >= count:
                    return
                time.sleep(0.1)
        raise RuntimeError(f"{count} RQ workers not registered after {WORKERS_READY_SECONDS} s")

    def envoy_counters(self) -> dict[str, int]:
        """Envoy's response-code and overflow counters (admin /stats), to explain errors the task service never saw."""
        url = f"http://127.0.0.1:{self.ports.envoy_admin}/stats?format=json&filter=" + urllib.parse.quote(
            ENVOY_COUNTERS
        )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback admin port
                stats = json.load(response)["stats"]
        except (OSError, ValueError, KeyError):
            return {}
        return {stat["name"]: stat["value"] for stat in stats if "value" in stat}

    def redis_calls(self) -> dict[str, int]:
        """Calls per Redis command since the server started (INFO commandstats), to count the commands a task costs."""
        stats = self.local.redis().info("commandstats")
        return {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}

    def redis_work(self) -> dict[str, int]:
        """Redis's own counters since it started: microseconds spent executing commands (INFO commandstats' usec,
        summed) and bytes in and out (INFO stats), for what a task costs the one Redis primary."""
        redis = self.local.redis()
        stats = redis.info("stats")
        return {
            "command_us": sum(int(values["usec"]) for values in redis.info("commandstats").values()),
            "net_input_bytes": int(stats["total_net_input_bytes"]),
            "net_output_bytes": int(stats["total_net_output_bytes"]),
        }

    @property
    def on_ferretdb(self) -> bool:
        """Whether the store is the local FerretDB on PostgreSQL (not a MongoDB given by BENCH_MONGO_URL)."""
        return "postgres" in self.local.definitions

    def psql(self, query: str) -> str:
        """What psql prints for `query` on the stack's PostgreSQL (unaligned, tuples only)."""
        return self.local.psql(query)

    def store_work(self) -> dict[str, int]:
        """PostgreSQL's counters under FerretDB (pg_stat_database): transactions and rows, since FerretDB keeps no
        operation counters of its own; {} against a MongoDB (BENCH_MONGO_URL)."""
        if not self.on_ferretdb:
            return {}
        columns = ("xact_commit", "tup_fetched", "tup_inserted", "tup_updated", "tup_deleted")
        values = self.psql(f"SELECT {', '.join(columns)} FROM pg_stat_database WHERE datname = 'postgres'")
        return dict(zip(columns, map(int, values.split("|")), strict=True))

    def mongo_operations(self) -> dict[str, int]:
        """Operations the store served, by kind (store_operations)."""
        return store_operations(self.local.mongo().admin.command("serverStatus"))

    def log_offsets(self) -> dict[str, int]:
        """How far each process's log has been written, to summarise what comes after."""
        return {path.stem: path.stat().st_size for path in self.workdir.glob("*.log")}

    def log_events(self, offsets: dict[str, int]) -> dict[str, dict[str, int]]:
        """Warnings and errors each process logged since `offsets`: {process: {"level: message (error)": count}}."""
        events: dict[str, dict[str, int]] = {}
        for path in sorted(self.workdir.glob("*.log")):
            with path.open("rb") as log:
                log.seek(offsets.get(path.stem, 0))
                lines = log.read().decode(errors="replace").splitlines()
            counts: dict[str, int] = {}
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"level": "raw", "message": line}
                if not isinstance(event, dict) or event.get("level") in ("debug", "info"):
                    continue
                text = f"{event.get('level')}: {str(event.get('message', ''))[:120]}"
                if event.get("error"):
                    text += f" ({str(event['error'])[:120]})"
                counts[text] = counts.get(text, 0) + 1
            if counts:
                events[path.stem] = dict(sorted(counts.items(), key=lambda item: -item[1])[:10])
        return events

    def max_stack_rss(self) -> tuple[float, dict[str, float]]:
        """(highest peak RSS of any stack process, peak per process label), MiB; load generators excluded."""
        peaks = {label: mib for label, mib in self.monitor.peak_rss_mib().items() if not label.startswith("load:")}
        return max(peaks.values(), default=0.0), peaks
