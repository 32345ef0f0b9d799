"""The scenarios of `make bench`; bench/README.md says what each one measures.

Scenarios run in groups (GROUPS), each group on a fresh stack (BenchStack); the first ones:
  api      floor, create_rest, create_grpc, get_rest   (dispatcher stopped while load runs)
  e2e      e2e_image, e2e_image_light, e2e_image_slow_upstream   (10 workers)
  video    video_in_flight                             (10 workers, 60 s videos)
  scaling  scaling                                     (1, 2, 4, 8, 16 workers)
The larger groups (scale, soak, cluster) live in modules of their own.
Before every measured load the task collection and the queues are emptied, so each
measurement starts from the same state, and a warm-up run goes first.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer
from ulid import ULID

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common.outputs import GRIDFS_BUCKET
from aitask_common.queue_shards import layout
from aitask_common.queues import QUEUE_ORDER, RESULT_TTL_SECONDS, watch_key, watched
from aitask_common.rq_shards import shard_queue
from aitask_common.tasks import (
    BILLING_OPEN_FIELD,
    INFLIGHT_USERS_KEY,
    TaskStatus,
    created_buckets,
    inflight_key,
    task_buckets,
)
from bench.harness import load
from bench.harness.load import LoadResult
from bench.harness.profiling import Profiler
from bench.harness.stack import BenchStack
from bench.harness.webhook_receiver import BenchReceiver
from devstack.processes import ROOT
from task_service.paging import ListFilters, next_page_token

SCENARIOS = (
    "create_rest",
    "create_grpc",
    "floor",
    "get_rest",
    "e2e_image",
    "e2e_image_light",
    "e2e_image_slow_upstream",
    "video_in_flight",
    "scaling",
    "watch",
    "webhooks",
    "fairness",
    "e2e_image_outputs",
    "billing",
    "console",
    "scale",
    "capacity",
    "soak",
    "cluster",
)
GROUPS = {
    "api": ("floor", "create_rest", "create_grpc", "get_rest"),
    "e2e": ("e2e_image", "e2e_image_light", "e2e_image_slow_upstream"),
    "video": ("video_in_flight",),
    "scaling": ("scaling",),
    "watch": ("watch",),
    "webhooks": ("webhooks",),
    "fairness": ("fairness",),
    "outputs": ("e2e_image_outputs",),
    "billing": ("billing",),
    "console": ("console",),
    "scale": ("scale",),
    "capacity": ("capacity",),
    "soak": ("soak",),
    "cluster": ("cluster",),
}

FLOOR_PROCESSES = 4
E2E_WORKERS = 10
SLOW_LATENCY_S = 3.0
# e2e_image_light's pace: one task at a time, so its latency is a single task's time to complete (issue 24).
LIGHT_RATE_PER_S = 20
SCALING_WORKERS = (1, 2, 4, 8, 16)
WATCH_LATENCY_S = 2.0
# reset_data waits this long at most for the settlement of the tasks it drops (a pass every 10 s).
SETTLE_PATIENCE_S = 30.0
WATCH_READS_METRIC = "aitask_task_reads_for_watchers_total"
# Creates are spread over this many users, each far below the per-user cap on tasks in flight;
# a scenario's tasks are told apart by their prompt.
USERS = 10_000
USER_PREFIX = "bench-u"
GHZ_USER = USER_PREFIX + "{{randomInt 1 " + str(USERS) + "}}"  # ghz template function
# The webhooks scenario's users: integrators with this many tasks each on average (at random, the busiest stays
# below MAX_INFLIGHT_TASKS_PER_USER), who read their signing secret before their first message (a receiver cannot
# verify without it).
WEBHOOK_TASKS_PER_USER = 50


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of a run; `Plan.quick()` is a smoke test whose numbers mean nothing."""

    concurrency: int = 1000
    load_seconds: float = 30
    warmup_seconds: float = 5
    paced_seconds: float = 15
    read_tasks: int = 1000
    e2e_tasks: int = 3000
    slow_tasks: int = 120
    light_tasks: int = 600
    video_tasks: int = 5000
    video_seconds: float = 60
    video_patience_s: float = 240
    scaling_window_s: float = 12
    scaling_backlog: int = 8000
    profile_seconds: float = 15
    watchers: int = 1000
    webhook_tasks: int = 10_000
    fairness_burst: int = 5000
    fairness_seconds: int = 30
    console_tasks: int = 100_000
    scale_tasks: int = 1_000_000
    scale_users: int = 10_000
    soak_seconds: float = 1800
    soak_warmup_s: float = 600
    soak_calibration_s: float = 120

    def with_sizes(self, assignments: list[str]) -> Plan:
        """This plan with `field=value` overrides (each value read as the field's type); ValueError names a bad one."""
        changes: dict[str, Any] = {}
        for assignment in assignments:
            name, _, value = assignment.partition("=")
            if name not in vars(self) or not value:
                raise ValueError(f"--set {assignment!r}: expected SIZE=VALUE with SIZE one of {', '.join(vars(self))}")
            changes[name] = type(getattr(self, name))(value)
        return replace(self, **changes)

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            concurrency=100,
            load_seconds=5,
            warmup_seconds=2,
            paced_seconds=3,
            read_tasks=100,
            e2e_tasks=200,
            slow_tasks=20,
            light_tasks=40,
            video_tasks=100,
            video_seconds=10,
            video_patience_s=60,
            scaling_window_s=3,
            scaling_backlog=1000,
            profile_seconds=5,
            watchers=100,
            webhook_tasks=200,
            fairness_burst=300,
            fairness_seconds=5,
            console_tasks=2000,
            scale_tasks=20_000,
            scale_users=200,
            soak_seconds=60,
            soak_warmup_s=20,
            soak_calibration_s=10,
        )


IMAGE = {"provider": "volcengine", "model": "doubao-seedream-3-0-t2i-250415", "size": "1024x1024"}
VIDEO = {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20", "aspect_ratio": "16:9"}


def prompt(scenario: str) -> str:
    """The prompt of a scenario's tasks: how its tasks are found again."""
    return f"{scenario}: a lighthouse at dawn, watercolour"


@dataclass
class Bench:
    """One `make bench` run: tools, options and the results gathered so far."""

    wrk_path: str
    ghz_path: str
    plan: Plan = field(default_factory=Plan)
    profile_dir: Path | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)


# --- small helpers --------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """(p50, p95, p99), nearest rank."""
    if not values:
        return 0.0, 0.0, 0.0
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered))) - 1))]

    return rank(0.50), rank(0.95), rank(0.99)


def watcher(stack: BenchStack) -> load.Watch:
    """Registers a load tool's pid with the stack's monitor while it runs."""

    def watch(name: str, pid: int | None) -> None:
        if pid is None:
            stack.load_pids.pop(name, None)
        else:
            stack.load_pids[name] = pid

    return watch


def reset_data(stack: BenchStack) -> None:
    """Empty the tasks collection, the stored outputs, the queues and the per-user in-flight sets.

    The collection is dropped and re-created with the indexes it had (those the task service made
    at start-up): much faster than deleting every document, and the next scenario inserts into
    the same index set as a fresh stack does. With the dispatcher running, its settlement pass settles the final
    tasks still holding credit first: a task dropped with its hold would leave the hold to the orphan sweep (a
    "task never stored" warning) and its reserve entry to the ledger check (a problem), minutes into the next
    scenario.
    """
    tasks = stack.local.tasks()
    if "dispatcher" in stack.local.running:
        unsettled = {
            BILLING_OPEN_FIELD: True,
            "status": {"$in": [status.value for status in TaskStatus if status.is_final]},
        }
        deadline = time.monotonic() + SETTLE_PATIENCE_S
        while tasks.count_documents(unsettled, limit=1) and time.monotonic() < deadline:
            time.sleep(1)
    for collection in [tasks, *(tasks.database[f"{GRIDFS_BUCKET}.{part}"] for part in ("files", "chunks", "uploads"))]:
        indexes = [spec for name, spec in collection.index_information().items() if name != "_id_"]
        collection.drop()
        for spec in indexes:
            options = {key: spec[key] for key in ("unique", "sparse") if key in spec}
            collection.create_index(spec["key"], **options)
    with stack.redis() as redis:
        for shard in layout().shards():
            for name in QUEUE_ORDER:
                shard_queue(redis, name, shard).empty()
            redis.delete(watch_key(shard))
        redis.delete(INFLIGHT_USERS_KEY)
        for key in redis.scan_iter(inflight_key("*"), count=1000):
            redis.delete(key)


def window(stack: BenchStack) -> Callable[[], dict[str, Any]]:
    """Start measuring peak RSS, CPU and logged warnings; the returned function closes the window and returns them."""
    stack.monitor.reset_peaks()
    stack.monitor.mark_cpu()
    load_before = os.getloadavg()[0]
    log_offsets = stack.log_offsets()
    envoy_before = stack.envoy_counters()
    redis_before, mongo_before = stack.redis_calls(), stack.mongo_operations()
    redis_work_before, store_before = stack.redis_work(), stack.store_work()

    def close() -> dict[str, Any]:
        cpu = stack.monitor.cpu_seconds()
        top, peaks = stack.max_stack_rss()
        redis_calls = _growth(redis_before, stack.redis_calls())
        return {
            "redis_commands": sum(redis_calls.values()),
            "redis_commands_by_name": dict(sorted(redis_calls.items(), key=lambda item: -item[1])),
            "redis_work": _growth(redis_work_before, stack.redis_work()),
            "store_work": _growth(store_before, stack.store_work()),
            "mongo_operations": _growth(mongo_before, stack.mongo_operations()),
            "max_rss_mib": top,
            "rss_mib": peaks,
            "cpu_s": cpu,
            "loadavg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "log_events": stack.log_events(log_offsets),
            "envoy": {
                name.rsplit(".", 1)[-1]: value - envoy_before.get(name, 0)
                for name, value in stack.envoy_counters().items()
                if value != envoy_before.get(name, 0)
            },
        }

    return close


def _growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What each counter added, leaving out those that did not move."""
    return {name: value - before.get(name, 0) for name, value in after.items() if value != before.get(name, 0)}


def count(stack: BenchStack, tag: str, status: TaskStatus) -> int:
    return stack.local.tasks().count_documents({"prompt": tag, "status": status.value})


def wait_final(
    stack: BenchStack, tag: str, expected: int, timeout: float, interval: float = 0.5, progress: bool = False
) -> int:
    """Wait until `expected` tasks (all created since the last reset_data) are completed or failed, or the
    timeout; return how many.

    Counts the reconciler's watch set, which holds exactly the unfinished tasks: counting documents in
    FerretDB would scan the whole collection twice a second, a load the scenario itself does not have.
    The caller reads the documents once at the end (by prompt `tag`) for the real outcome.
    """
    del tag  # the watch set holds only this scenario's tasks
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    with stack.redis() as redis:
        while True:
            final = expected - watched(redis)
            if final >= expected or time.monotonic() > deadline:
                return final
            if progress and time.monotonic() - last_report > 15:
                say(f"    {final}/{expected} final")
                last_report = time.monotonic()
            time.sleep(interval)


def create_tasks(
    bench: Bench,
    stack: BenchStack,
    method: str,
    body: dict[str, Any],
    tag: str,
    total: int,
    concurrency: int = 100,
    rate: float | None = None,
) -> LoadResult:
    """Create `total` tasks with prompt `tag` through Envoy with ghz (set-up or the create phase of e2e), at once
    or `rate` a second."""
    return load.ghz(
        bench.ghz_path,
        watcher(stack),
        f"127.0.0.1:{stack.ports.envoy}",
        method,
        {"user_id": GHZ_USER} | body | {"prompt": tag},
        concurrency=concurrency,
        connections=max(1, concurrency // 10),
        total=total,
        rate=rate,
    )


def create_args(scenario: str) -> list[str]:
    """create.lua's arguments: the prompt, and the users to spread the creates over."""
    return [prompt(scenario), USER_PREFIX, str(USERS)]


def run_floor(
    stack: BenchStack, plan: Plan, operation: str, duration: float, ids_file: Path | None = None
) -> LoadResult:
    """The floor driver (bench/harness/floor.py): FLOOR_PROCESSES processes sharing plan.concurrency threads."""
    watch = watcher(stack)
    threads = plan.concurrency // FLOOR_PROCESSES
    start_at = time.time() + 3.0  # after every process has imported and connected
    argv = [
        sys.executable,
        "-m",
        "bench.harness.floor",
        operation,
        "--mongo-url",
        stack.local.env["MONGO_URL"],
        "--database",
        stack.local.database,
        "--redis-url",
        stack.local.env["REDIS_URL"],
        "--threads",
        str(threads),
        "--duration",
        str(duration),
        "--warmup",
        str(plan.warmup_seconds),
        "--start-at",
        str(start_at),
    ]
    if ids_file is not None:
        argv += ["--ids-file", str(ids_file)]
    processes = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(FLOOR_PROCESSES)
    ]
    for index, process in enumerate(processes):
        watch(f"floor-{index}", process.pid)
    operations, errors, latencies = 0, 0, []
    cpu_before = load.children_cpu_seconds()
    for index, process in enumerate(processes):
        stdout, stderr = process.communicate(timeout=duration + plan.warmup_seconds + 120)
        watch(f"floor-{index}", None)
        line = next((line for line in stdout.splitlines() if line.startswith("FLOOR_JSON ")), None)
        if process.returncode != 0 or line is None:
            raise RuntimeError(f"floor driver failed ({process.returncode}): {stderr[-2000:]}")
        data = json.loads(line.removeprefix("FLOOR_JSON "))
        operations += data["operations"]
        errors += data["errors"]
        latencies += data["latencies_ms"]
    p50, p95, p99 = percentiles(latencies)
    return LoadResult(
        operations + errors,
        errors,
        duration,
        p50,
        p95,
        p99,
        {
            "tool": "bench.harness.floor",
            "processes": FLOOR_PROCESSES,
            "threads_per_process": threads,
            "tool_cpu_s": round(load.children_cpu_seconds() - cpu_before, 1),
        },
    )


def run_rq_floor(stack: BenchStack, workers: int) -> dict[str, Any]:
    """RQ's own throughput with `workers` SimpleWorkers running no-op jobs (bench/harness/rqfloor.py)."""
    jobs = min(3000, 600 * workers)
    argv = [sys.executable, "-m", "bench.harness.rqfloor", stack.local.env["REDIS_URL"], str(workers), str(jobs)]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher(stack)("rqfloor", process.pid)
    stdout, stderr = process.communicate(timeout=300)
    watcher(stack)("rqfloor", None)
    line = next((line for line in stdout.splitlines() if line.startswith("RQFLOOR_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"rq floor failed ({process.returncode}): {stderr[-2000:]}")
    return json.loads(line.removeprefix("RQFLOOR_JSON "))


def profile_during(
    bench: Bench,
    stack: BenchStack,
    scenario: str,
    targets: list[tuple[str, bool, bool]],
    drive: Callable[[], object],
    delay: float = 3.0,
) -> None:
    """Run `drive()` (a load) while py-spy records each target: (process name, with subprocesses, GIL only)."""
    profile_dir = bench.profile_dir
    if profile_dir is None:
        return
    roots = stack.roots()
    profilers: list[Profiler] = []

    def start_profilers() -> None:
        time.sleep(delay)
        for name, subprocesses, gil in targets:
            output = profile_dir / f"{scenario}-{name}-{'cpu' if gil else 'wall'}.raw"
            profilers.append(Profiler(roots[name], bench.plan.profile_seconds, output, subprocesses, gil))

    say(f"    profiling {', '.join(sorted({name for name, _, _ in targets}))} under a second run of the load")
    starter = threading.Thread(target=start_profilers)
    starter.start()
    drive()
    starter.join()
    for profiler in profilers:
        bench.profiles[f"{scenario}/{profiler.output.stem}"] = profiler.wait()
        say(f"    wrote {profiler.output.with_suffix('.txt')}")


# --- api group: floor, create_rest, create_grpc, get_rest -------------------------------------


def api_group(bench: Bench, selected: set[str]) -> None:
    plan = bench.plan
    with BenchStack("api", workers=4) as stack:
        stack.stop_dispatcher()  # measure the create/read path alone; the queue just grows
        watch = watcher(stack)
        rest_url = f"http://127.0.0.1:{stack.ports.envoy}"
        grpc_target = f"127.0.0.1:{stack.ports.envoy}"
        floor = bench.results.setdefault("floor", {})

        if selected & {"floor", "create_rest", "create_grpc"}:
            say(
                f"  floor: insert_one + RQ enqueue, {plan.concurrency} threads in {FLOOR_PROCESSES} processes, "
                f"{plan.load_seconds} s"
            )
            reset_data(stack)
            close = window(stack)
            result = run_floor(stack, plan, "create", plan.load_seconds)
            floor.update(result.summary() | {"detail": result.detail} | close())
            say(f"    {_line(floor)}")

        if "create_rest" in selected:
            say(f"  create_rest: wrk POST /api/v1/ai/image/task, {plan.concurrency} connections, {plan.load_seconds} s")
            reset_data(stack)
            load.wrk(
                bench.wrk_path,
                watch,
                rest_url,
                "create.lua",
                create_args("warmup"),
                plan.concurrency,
                plan.warmup_seconds,
            )
            close = window(stack)
            result = load.wrk(
                bench.wrk_path,
                watch,
                rest_url,
                "create.lua",
                create_args("create_rest"),
                plan.concurrency,
                plan.load_seconds,
            )
            entry = result.summary() | {"detail": result.detail} | close()
            say(f"    {_line(entry)}")
            paced = load.wrk(
                bench.wrk_path,
                watch,
                rest_url,
                "create.lua",
                create_args("paced"),
                plan.concurrency,
                plan.paced_seconds,
                rate=1000,
            )
            entry["paced_1000_per_s"] = paced.summary()
            say(f"    paced at 1000/s: {_line(paced.summary())}")
            bench.results["create_rest"] = entry
            profile_during(
                bench,
                stack,
                "create_rest",
                [("task_service", False, True), ("task_service", False, False)],
                lambda: load.wrk(
                    bench.wrk_path,
                    watch,
                    rest_url,
                    "create.lua",
                    create_args("profile"),
                    plan.concurrency,
                    plan.profile_seconds + 5,
                ),
            )

        if "create_grpc" in selected:
            say(
                f"  create_grpc: ghz CreateImageTask via Envoy, {plan.concurrency} concurrent on {plan.concurrency} "
                f"connections, {plan.load_seconds} s"
            )
            reset_data(stack)
            body = IMAGE | {"prompt": prompt("create_grpc"), "user_id": GHZ_USER}

            def run_ghz(seconds: float) -> LoadResult:
                return load.ghz(
                    bench.ghz_path,
                    watch,
                    grpc_target,
                    "CreateImageTask",
                    body,
                    plan.concurrency,
                    plan.concurrency,
                    duration_s=seconds,
                )

            run_ghz(plan.warmup_seconds)
            close = window(stack)
            result = run_ghz(plan.load_seconds)
            entry = result.summary() | {"detail": result.detail} | close()
            say(f"    {_line(entry)}")
            bench.results["create_grpc"] = entry

        if selected & {"floor", "get_rest"}:
            say(f"  seeding {plan.read_tasks} completed image tasks for the read scenarios")
            reset_data(stack)
            ids_file = seed_completed(bench, stack, plan.read_tasks)
            say(
                f"  floor (read): find_one by _id, {plan.concurrency} threads in {FLOOR_PROCESSES} processes, "
                f"{plan.load_seconds} s"
            )
            close = window(stack)
            result = run_floor(stack, plan, "read", plan.load_seconds, ids_file)
            floor["read"] = result.summary() | close()
            say(f"    {_line(floor['read'])}")

        if "get_rest" in selected:
            say(
                f"  get_rest: wrk GET /api/v1/ai/task/result/{{id}}, {plan.concurrency} connections, "
                f"{plan.load_seconds} s"
            )
            args = [str(ids_file)]
            load.wrk(bench.wrk_path, watch, rest_url, "get.lua", args, plan.concurrency, plan.warmup_seconds)
            close = window(stack)
            result = load.wrk(bench.wrk_path, watch, rest_url, "get.lua", args, plan.concurrency, plan.load_seconds)
            entry = result.summary() | {"detail": result.detail} | close()
            say(f"    {_line(entry)}")
            paced = load.wrk(
                bench.wrk_path, watch, rest_url, "get.lua", args, plan.concurrency, plan.paced_seconds, rate=2000
            )
            entry["paced_2000_per_s"] = paced.summary()
            say(f"    paced at 2000/s: {_line(paced.summary())}")
            bench.results["get_rest"] = entry
            profile_during(
                bench,
                stack,
                "get_rest",
                [("task_service", False, True), ("task_service", False, False)],
                lambda: load.wrk(
                    bench.wrk_path, watch, rest_url, "get.lua", args, plan.concurrency, plan.profile_seconds + 5
                ),
            )

        if not floor:
            bench.results.pop("floor")


def seed_completed(bench: Bench, stack: BenchStack, total: int) -> Path:
    """Create `total` image tasks, let the workers complete them, and write their ids to a file."""
    tag = prompt("get_rest")
    created = create_tasks(bench, stack, "CreateImageTask", IMAGE, tag, total)
    if created.errors:
        raise RuntimeError(f"seeding: {created.errors} creates failed: {created.detail}")
    stack.start_dispatcher(4)
    final = wait_final(stack, tag, total, timeout=120)
    stack.stop_dispatcher()
    if final < total:
        raise RuntimeError(f"seeding: only {final} of {total} tasks finished")
    ids_file = stack.workdir / "task_ids.txt"
    ids_file.write_text("\n".join(doc["_id"] for doc in stack.local.tasks().find({"prompt": tag}, {"_id": 1})))
    return ids_file


# --- e2e group ---------------------------------------------------------------------------------


def e2e_group(bench: Bench, selected: set[str]) -> None:
    plan = bench.plan
    with BenchStack("e2e", workers=E2E_WORKERS) as stack:
        say(f"  RQ floor: no-op jobs on {E2E_WORKERS} SimpleWorkers")
        rq_floor = run_rq_floor(stack, E2E_WORKERS)
        say(f"    {rq_floor['throughput_per_s']} jobs/s")

        if "e2e_image" in selected:
            say(f"  e2e_image: {plan.e2e_tasks} Seedream tasks created with ghz, {E2E_WORKERS} workers, latency 0")
            reset_data(stack)
            close = window(stack)
            entry = run_e2e(bench, stack, prompt("e2e_image"), plan.e2e_tasks)
            entry |= close() | {"floor": {"rq_noop_jobs": rq_floor}}
            entry["ratio_to_floor"] = round(entry["throughput_per_s"] / rq_floor["throughput_per_s"], 3)
            per_task(entry)
            say(f"    {_line(entry)}")
            bench.results["e2e_image"] = entry
            profile_during(
                bench,
                stack,
                "e2e_image",
                [
                    ("dispatcher", True, True),
                    ("dispatcher", True, False),
                    ("provider_volcengine", False, True),
                    ("simulator", False, True),
                ],
                lambda: run_e2e(bench, stack, prompt("profile"), plan.e2e_tasks),
                delay=2.0,
            )

        if "e2e_image_light" in selected:
            say(f"  e2e_image_light: {plan.light_tasks} Seedream tasks created at {LIGHT_RATE_PER_S}/s, latency 0")
            reset_data(stack)
            # Each worker's first task opens its connections (MongoDB, the provider's channel, GridFS's indexes):
            # measured apart, so the run measures a task on a running system.
            cold = run_e2e(bench, stack, prompt("e2e_image_light_cold"), 4 * E2E_WORKERS, rate=LIGHT_RATE_PER_S)
            close = window(stack)
            entry = run_e2e(bench, stack, prompt("e2e_image_light"), plan.light_tasks, rate=LIGHT_RATE_PER_S)
            entry |= close() | {"offered_per_s": LIGHT_RATE_PER_S, "cold_start": cold}
            per_task(entry)
            say(f"    {_line(entry)}")
            bench.results["e2e_image_light"] = entry

        if "e2e_image_slow_upstream" in selected:
            ideal = E2E_WORKERS / SLOW_LATENCY_S
            say(
                f"  e2e_image_slow_upstream: {plan.slow_tasks} tasks, simulator latency {SLOW_LATENCY_S:g} s, "
                f"{E2E_WORKERS} workers (ideal {ideal:.2f}/s)"
            )
            reset_data(stack)
            with stack.local.sim() as sim:
                sim.set_faults("ark.images", latency_s=SLOW_LATENCY_S)
                close = window(stack)
                entry = run_e2e(bench, stack, prompt("e2e_image_slow_upstream"), plan.slow_tasks)
                sim.clear_faults()
            entry |= close() | {"floor": {"workers_over_latency_per_s": round(ideal, 3)}}
            entry["ratio_to_floor"] = round(entry["throughput_per_s"] / ideal, 3)
            say(f"    {_line(entry)}")
            bench.results["e2e_image_slow_upstream"] = entry


def capacity_group(bench: Bench, selected: set[str]) -> None:
    """The first step of issue 24's capacity model (deploy/CAPACITY.md), measured: e2e_image on the stack's two
    task-service processes and one dispatcher of E2E_WORKERS workers, then two dispatchers of half as many each,
    all against one Redis; what a task costs each process and Redis (its command time from INFO commandstats)."""
    del selected  # one scenario
    runs: dict[str, dict[str, Any]] = {}
    with BenchStack("capacity", workers=E2E_WORKERS) as stack:
        for dispatchers in (1, 2):
            stack.stop_dispatcher()
            stack.start_dispatcher(E2E_WORKERS // dispatchers)
            if dispatchers == 2:
                stack.local.add_dispatcher_instance("dispatcher_2", E2E_WORKERS // 2)
                stack.local.start("dispatcher_2")
                stack.wait_for_workers(E2E_WORKERS)
            say(f"  capacity: e2e_image, {bench.plan.e2e_tasks} tasks, 2 task services, {dispatchers} dispatcher(s)")
            reset_data(stack)
            close = window(stack)
            entry = run_e2e(bench, stack, prompt(f"capacity_{dispatchers}"), bench.plan.e2e_tasks) | close()
            per_task(entry)
            say(f"    {_line(entry)}; Redis {entry['redis_per_task']} per task")
            runs[f"dispatchers_{dispatchers}"] = entry
    two = runs["dispatchers_2"]
    bench.results["capacity"] = (
        runs
        | {key: two[key] for key in ("throughput_per_s", "p50_ms", "p95_ms", "p99_ms", "errors")}
        | {"ratio_to_floor": round(two["throughput_per_s"] / runs["dispatchers_1"]["throughput_per_s"], 3)}
    )


def per_task(entry: dict[str, Any]) -> None:
    """Redis commands, Redis's own time and bytes, each process's CPU and MongoDB operations per completed task (the
    whole stack's, bench reads included)."""
    if completed := entry["completed"]:
        entry["redis_commands_per_task"] = round(entry["redis_commands"] / completed, 1)
        entry["redis_per_task"] = {name: round(value / completed, 1) for name, value in entry["redis_work"].items()}
        entry["store_per_task"] = {name: round(value / completed, 1) for name, value in entry["store_work"].items()}
        entry["cpu_ms_per_task"] = {name: round(cpu * 1000 / completed, 2) for name, cpu in entry["cpu_s"].items()}
        if operations := entry["mongo_operations"]:  # a store that counts nothing reports none, not zero
            entry["mongo_operations_per_task"] = round(sum(operations.values()) / completed, 1)
            entry["mongo_per_task"] = {name: round(value / completed, 1) for name, value in operations.items()}


def run_e2e(
    bench: Bench,
    stack: BenchStack,
    tag: str,
    total: int,
    body: dict[str, Any] | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """Create `total` image tasks at once (or `rate` a second), wait for all to finish; throughput and latency from
    create to completed."""
    started = time.monotonic()
    concurrency = 100 if rate is None else 10
    created = create_tasks(bench, stack, "CreateImageTask", body or IMAGE, tag, total, concurrency, rate)
    accepted = total - created.errors
    final = wait_final(stack, tag, accepted, timeout=60 + total / 20)
    wall = time.monotonic() - started
    documents = list(stack.local.tasks().find({"prompt": tag}, {"status": 1, "created": 1, "updated": 1}))
    completed = [doc for doc in documents if doc["status"] == TaskStatus.COMPLETED.value]
    span = (
        (max(doc["updated"] for doc in completed) - min(doc["created"] for doc in documents)).total_seconds()
        if completed
        else wall
    )
    latencies = [(doc["updated"] - doc["created"]).total_seconds() * 1000 for doc in completed]
    p50, p95, p99 = percentiles(latencies)
    return {
        "throughput_per_s": round(len(completed) / span, 1) if span else 0.0,
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(p99, 1),
        "errors": total - len(completed),
        "tasks": total,
        "completed": len(completed),
        "unfinished": accepted - final,
        "create_errors": created.errors,
        "span_s": round(span, 2),
        "wall_s": round(wall, 2),
        "create_throughput_per_s": round(created.throughput_per_s, 1),
    }


# --- video group ---------------------------------------------------------------------------------


def video_group(bench: Bench, selected: set[str]) -> None:
    plan = bench.plan
    tag = prompt("video_in_flight")
    env = {"SIMULATOR_VIDEO_SECONDS": str(plan.video_seconds)}
    say(
        f"  video_in_flight: {plan.video_tasks} videos of {plan.video_seconds:g} s, {E2E_WORKERS} workers, "
        f"patience {plan.video_seconds + plan.video_patience_s:g} s after the last create"
    )
    with BenchStack("video", workers=E2E_WORKERS, env=env) as stack:
        close = window(stack)
        started = time.monotonic()
        created = create_tasks(bench, stack, "CreateVideoTask", VIDEO, tag, plan.video_tasks)
        say(f"    created in {time.monotonic() - started:.1f} s ({created.errors} errors)")
        accepted = plan.video_tasks - created.errors
        final = wait_final(
            stack, tag, accepted, timeout=plan.video_seconds + plan.video_patience_s, interval=5, progress=True
        )
        wall = time.monotonic() - started
        with stack.local.sim() as sim:
            stats = sim.stats()
        documents = list(
            stack.local.tasks().find({"prompt": tag}, {"status": 1, "created": 1, "updated": 1, "submitted": 1})
        )
        resources = close()
    completed = [doc for doc in documents if doc["status"] == TaskStatus.COMPLETED.value]
    # (submitted, lateness in ms) in submit order
    submitted_lateness = sorted(
        (doc["submitted"], ((doc["updated"] - doc["submitted"]).total_seconds() - plan.video_seconds) * 1000)
        for doc in completed
        if doc.get("submitted")
    )
    lateness = [late for _, late in submitted_lateness]
    submit_delays = [(doc["submitted"] - doc["created"]).total_seconds() for doc in documents if doc.get("submitted")]
    # Where the late ones are: per tenth of the tasks in submit order, max lateness (s) and how many were over 5 s.
    tenths = [lateness[i * len(lateness) // 10 : (i + 1) * len(lateness) // 10] for i in range(10)]
    p50, p95, p99 = percentiles(lateness)
    span = (
        (max(doc["updated"] for doc in completed) - min(doc["created"] for doc in documents)).total_seconds()
        if completed
        else wall
    )
    within = sum(1 for value in lateness if value <= 5000)
    entry = {
        "throughput_per_s": round(len(completed) / span, 1) if span else 0.0,
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(p99, 1),
        "errors": plan.video_tasks - len(completed),
        "latency_measures": "lateness: completed time minus upstream finish (submitted + video seconds)",
        "tasks": plan.video_tasks,
        "completed": len(completed),
        "unfinished": accepted - final,
        "max_lateness_s": round(max(lateness) / 1000, 1) if lateness else None,
        "completed_within_5s": within,
        "max_submit_delay_s": round(max(submit_delays), 1) if submit_delays else None,
        "lateness_by_submit_tenth": [
            {"max_s": round(max(part) / 1000, 1), "over_5s": sum(1 for late in part if late > 5000)}
            for part in tenths
            if part
        ],
        "upstream_submits": stats.get("visual.CVSync2AsyncSubmitTask", {}).get("ok"),
        "upstream_polls": stats.get("visual.CVSync2AsyncGetResult", {}).get("requests"),
        "span_s": round(span, 1),
        "wall_s": round(wall, 1),
    } | resources
    say(
        f"    {_line(entry)}; {within}/{plan.video_tasks} within 5 s of the upstream; "
        f"max RSS {resources['max_rss_mib']} MiB"
    )
    bench.results["video_in_flight"] = entry


# --- scaling group -------------------------------------------------------------------------------


def scaling_group(bench: Bench, selected: set[str]) -> None:
    plan = bench.plan
    tag = prompt("scaling")
    say(
        f"  scaling: drain a backlog of Seedream tasks with {', '.join(map(str, SCALING_WORKERS))} workers, "
        f"{plan.scaling_window_s:g} s each"
    )
    with BenchStack("scaling", workers=1) as stack:
        stack.stop_dispatcher()
        close = window(stack)
        create_tasks(bench, stack, "CreateImageTask", IMAGE, tag, plan.scaling_backlog, concurrency=200)
        curve = []
        previous_rate = 50.0
        for workers in SCALING_WORKERS:
            rq_floor = run_rq_floor(stack, workers)
            pending = count(stack, tag, TaskStatus.PENDING)
            needed = int(previous_rate * 3 * (plan.scaling_window_s + 5))
            if pending < needed:
                create_tasks(bench, stack, "CreateImageTask", IMAGE, tag, needed, concurrency=200)
            stack.start_dispatcher(workers)
            time.sleep(2.0)  # workers past their first jobs (connections opened)
            before, began, began_wall = count(stack, tag, TaskStatus.COMPLETED), time.monotonic(), time.time()
            time.sleep(plan.scaling_window_s)
            after, ended, ended_wall = count(stack, tag, TaskStatus.COMPLETED), time.monotonic(), time.time()
            stack.stop_dispatcher()
            rate = (after - before) / (ended - began)
            previous_rate = max(rate, 1.0)
            job_ms = job_durations(stack, began_wall, ended_wall)
            p50, p95, p99 = percentiles(job_ms)
            point = {
                "workers": workers,
                "throughput_per_s": round(rate, 1),
                "p50_ms": round(p50, 1),
                "p95_ms": round(p95, 1),
                "p99_ms": round(p99, 1),
                "jobs_timed": len(job_ms),
                "floor_per_s": rq_floor["throughput_per_s"],
                "ratio_to_floor": round(rate / rq_floor["throughput_per_s"], 3),
            }
            curve.append(point)
            say(
                f"    {workers:>2} workers: {rate:7.1f} tasks/s  (RQ no-op floor {rq_floor['throughput_per_s']}/s, "
                f"job p50 {p50:.0f} ms, p99 {p99:.0f} ms)"
            )
        failed = count(stack, tag, TaskStatus.FAILED)
        resources = close()
    best = max(curve, key=lambda point: point["throughput_per_s"])
    base = curve[0]["throughput_per_s"] or 1.0
    for point in curve:
        point["speedup"] = round(point["throughput_per_s"] / base, 2)
    bench.results["scaling"] = {
        "throughput_per_s": best["throughput_per_s"],
        "p50_ms": best["p50_ms"],
        "p95_ms": best["p95_ms"],
        "p99_ms": best["p99_ms"],
        "errors": failed,
        "best_workers": best["workers"],
        "ratio_to_floor": best["ratio_to_floor"],
        "latency_measures": "per-job execution time in the worker (RQ started_at to ended_at)",
        "curve": curve,
    } | resources


def job_durations(stack: BenchStack, began: float, ended: float) -> list[float]:
    """Execution times (ms) of the dispatcher's jobs that finished between two wall-clock times."""
    with stack.redis() as redis:
        key = FinishedJobRegistry("default", connection=redis, serializer=JSONSerializer).key
        # A finished job's score is its end time plus its result TTL.
        ids = redis.zrangebyscore(key, began + RESULT_TTL_SECONDS, ended + RESULT_TTL_SECONDS)
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(b"rq:job:" + job_id, "started_at", "ended_at")
            rows = pipe.execute()
    durations = []
    for started, finished in rows:
        if started and finished:
            delta = _rq_time(finished) - _rq_time(started)
            durations.append(delta.total_seconds() * 1000)
    return durations


def _rq_time(raw: bytes) -> datetime:
    return datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ")


def _line(entry: dict[str, Any]) -> str:
    return (
        f"{entry['throughput_per_s']:8.1f}/s  p50 {entry['p50_ms']:7.1f} ms  p95 {entry['p95_ms']:7.1f} ms  "
        f"p99 {entry['p99_ms']:7.1f} ms  errors {entry['errors']}"
    )


# --- watch group ---------------------------------------------------------------------------------


def watch_group(bench: Bench, selected: set[str]) -> None:
    """plan.watchers WatchTask streams on one image task, all on ONE task-service process (no Envoy between):
    its RSS before, with every stream open, and after they closed; and how long each status change took from
    its MongoDB write (the event's `updated`) to each watcher (bench/harness/watchers.py)."""
    plan = bench.plan
    say(
        f"  watch: {plan.watchers} WatchTask streams on one task, one task-service process; the task goes "
        f"pending -> processing -> completed (simulator latency {WATCH_LATENCY_S:g} s)"
    )
    with BenchStack("watch", workers=2) as stack:
        stack.stop_dispatcher()  # the task stays pending until every watcher has its first event
        task_service = stack.local.running["task_service"].pid
        target = f"127.0.0.1:{stack.ports.task_service}"
        metrics_url = f"http://127.0.0.1:{stack.ports.metrics_task_service}/metrics"
        with stack.local.sim() as sim:
            sim.set_faults("ark.images", latency_s=WATCH_LATENCY_S)
            with grpc.insecure_channel(target) as channel:
                created = task_service_pb2_grpc.TaskServiceStub(channel).CreateImageTask(
                    pb.CreateImageTaskRequest(
                        prompt=prompt("watch"),
                        user_id=USER_PREFIX + "1",
                        provider=IMAGE["provider"],
                        model=IMAGE["model"],
                        size=IMAGE["size"],
                    ),
                    timeout=10,
                )
            task_id = created.data.task_id
            rss_before, reads_before = read_rss_mib(task_service), counter(metrics_url, WATCH_READS_METRIC)
            close = window(stack)
            argv = [sys.executable, "-m", "bench.harness.watchers", "--target", target, "--task-id", task_id]
            client = subprocess.Popen(
                [*argv, "--watchers", str(plan.watchers)], cwd=ROOT, stdout=subprocess.PIPE, text=True
            )
            watcher(stack)("watchers", client.pid)
            assert client.stdout is not None
            ready = client.stdout.readline().split()
            if not ready or ready[0] != "WATCHERS_READY":
                raise RuntimeError(f"watchers did not connect: {ready}")
            rss_watching = read_rss_mib(task_service)
            stack.start_dispatcher(2)
            stdout, _ = client.communicate(timeout=120)
            watcher(stack)("watchers", None)
            sim.clear_faults()
        line = next((line for line in stdout.splitlines() if line.startswith("WATCHERS_JSON ")), None)
        if client.returncode != 0 or line is None:
            raise RuntimeError(f"watchers failed ({client.returncode})")
        summary = json.loads(line.removeprefix("WATCHERS_JSON "))
        time.sleep(1.0)  # the streams' memory is released
        rss_after, reads = read_rss_mib(task_service), counter(metrics_url, WATCH_READS_METRIC) - reads_before
        resources = close()
    delays = summary["delays_ms"]
    every = [delay for values in delays.values() for delay in values]
    # Fan-out rate: events delivered over the time each change took to reach its last watcher.
    spread_s = sum(max(values) - min(values) for values in delays.values()) / 1000
    p50, p95, p99 = percentiles(every)
    entry = {
        "throughput_per_s": round(len(every) / spread_s, 1) if spread_s else 0.0,
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(p99, 1),
        "errors": summary["errors"] + sum(plan.watchers - len(values) for values in delays.values()),
        "latency_measures": "event latency: the task's update (its MongoDB write) to each watcher's receipt",
        "throughput_measures": "events delivered per second while a change fans out to every watcher",
        "watchers": plan.watchers,
        "connect_s": float(ready[2]),
        "events": {
            kind: {"received": len(values)}
            | dict(zip(("p50_ms", "p95_ms", "p99_ms"), percentiles(values), strict=True))
            for kind, values in delays.items()
        },
        "task_service_rss_mib": {"before": rss_before, "watching": rss_watching, "after": rss_after},
        "task_reads_for_watchers": reads,
    } | resources
    say(
        f"    {_line(entry)}; RSS {rss_before:.0f} -> {rss_watching:.0f} -> {rss_after:.0f} MiB; "
        f"{reads:.0f} MongoDB reads for {plan.watchers} watchers"
    )
    bench.results["watch"] = entry


def read_rss_mib(pid: int) -> float:
    """A process's resident set size now (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def counter(metrics_url: str, name: str) -> float:
    """The sum of a Prometheus counter's samples at a /metrics endpoint, every label's."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - loopback metrics port
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


def webhooks_group(bench: Bench, selected: set[str]) -> None:
    """plan.webhook_tasks Seedream tasks, each with a webhook to a local receiver, between two runs of the same
    tasks without webhooks: deliveries per second, final state to delivery, and the task throughput ratio (issue
    17: >= 0.9) to the mean of the runs before and after (the VM's speed drifts within minutes: a run on each side
    cancels a steady drift and the order's own effect)."""
    total = bench.plan.webhook_tasks
    users = max(1, total // WEBHOOK_TASKS_PER_USER)
    user = USER_PREFIX + "{{randomInt 1 " + str(users) + "}}"
    with BenchStack("webhooks", workers=E2E_WORKERS) as stack:
        say(f"  webhooks: {total} Seedream tasks without, with, then without a webhook each; {E2E_WORKERS} workers")

        def run_without(label: str) -> dict[str, Any]:
            reset_data(stack)
            close = window(stack)
            run = run_e2e(bench, stack, prompt(label), total, IMAGE | {"user_id": user})
            run |= {"cpu_s": close()["cpu_s"]}  # beside the run with webhooks': where their cost goes
            say(f"    without: {_line(run)}")
            return run

        without = run_without("webhooks_without")
        reset_data(stack)
        with stack.local.rest() as rest:
            for number in range(1, users + 1):
                rest.get("/api/v1/webhooks/secret", params={"user_id": f"{USER_PREFIX}{number}"}).raise_for_status()
        receiver = BenchReceiver().start()
        try:
            close = window(stack)
            tag = prompt("webhooks")
            began = time.monotonic()
            body = IMAGE | {"user_id": user, "webhook_url": receiver.url}
            with_hooks = run_e2e(bench, stack, tag, total, body)
            delivered = receiver.wait_for(with_hooks["completed"], timeout=120 + total / 50)
            wall = time.monotonic() - began
            receiver.stop()  # hands its arrivals over
            entry = with_hooks | close()
            documents = stack.local.tasks().find({"prompt": tag, "status": TaskStatus.COMPLETED.value}, {"updated": 1})
            lags = [
                (receiver.arrivals[doc["_id"]] - doc["updated"]).total_seconds() * 1000
                for doc in documents
                if doc["_id"] in receiver.arrivals
            ]
            arrivals = sorted(receiver.arrivals.values())
            span = (arrivals[-1] - arrivals[0]).total_seconds() if len(arrivals) > 1 else 0.0
            p50, p95, p99 = percentiles(lags)
            entry |= {
                "delivered": delivered,
                "receiver_requests": receiver.requests,
                "deliveries_per_s": round(len(arrivals) / span, 1) if span else 0.0,
                "final_to_delivery_p50_ms": round(p50, 1),
                "final_to_delivery_p95_ms": round(p95, 1),
                "final_to_delivery_p99_ms": round(p99, 1),
                "wall_with_deliveries_s": round(wall, 2),
                "floor": {"without_webhooks": without},
                "ratio_to_floor": round(with_hooks["throughput_per_s"] / without["throughput_per_s"], 3)
                if without["throughput_per_s"]
                else 0.0,
            }
        finally:
            receiver.stop()
        after = run_without("webhooks_without_after")
        floor = (without["throughput_per_s"] + after["throughput_per_s"]) / 2
        entry["floor"]["without_webhooks_after"] = after
        entry["ratio_to_first_floor"] = entry["ratio_to_floor"]
        entry["ratio_to_floor"] = round(with_hooks["throughput_per_s"] / floor, 3) if floor else 0.0
        say(
            f"    with: {_line(entry)}; {entry['deliveries_per_s']} deliveries/s, final->delivery "
            f"p99 {entry['final_to_delivery_p99_ms']} ms, throughput ratio {entry['ratio_to_floor']} "
            f"(to the run before alone: {entry['ratio_to_first_floor']})"
        )
        bench.results["webhooks"] = entry


# The first round with the ledger on is every user's first priced create (their credit hash is built from
# MongoDB): reported apart as `first_use`; the ratio is that of the rounds after it.
BILLING_ROUNDS = ("off", "on", "off", "on", "off", "on")


def billing_group(bench: Bench, selected: set[str]) -> None:
    """REST create throughput (wrk, the create_rest load) with the credit ledger on beside off, interleaved on one
    stack whose task services restart between rounds (issue 21: on / off >= 0.85, users already known)."""
    plan = bench.plan
    with BenchStack("billing", workers=4) as stack:
        stack.stop_dispatcher()  # the create path alone, as create_rest
        watch = watcher(stack)
        rest_url = f"http://127.0.0.1:{stack.ports.envoy}"
        rounds: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for mode in BILLING_ROUNDS:
            for name in ("task_service", "task_service_2"):
                stack.local.stop(name)
                stack.local.start(name, extra_env={"BILLING_ENABLED": "true" if mode == "on" else "false"})
            reset_data(stack)
            tag = prompt(f"billing_{mode}")
            args = [tag, USER_PREFIX, str(USERS)]
            load.wrk(bench.wrk_path, watch, rest_url, "create.lua", args, plan.concurrency, plan.warmup_seconds)
            close = window(stack)
            result = load.wrk(bench.wrk_path, watch, rest_url, "create.lua", args, plan.concurrency, plan.load_seconds)
            entry = result.summary() | close()
            say(f"    ledger {mode}: {_line(entry)}")
            rounds[mode].append(entry)
        first_use = rounds["on"].pop(0)
        on, off = (sum(run["throughput_per_s"] for run in rounds[mode][-2:]) for mode in ("on", "off"))
        bench.results["billing"] = rounds["on"][-1] | {
            "rounds": rounds,
            "first_use": first_use,
            "first_use_ratio": round(first_use["throughput_per_s"] / rounds["off"][0]["throughput_per_s"], 3),
            "floor": {"ledger_off": rounds["off"][-1]},
            "ratio_to_floor": round(on / off, 3) if off else 0.0,
        }
        ratio = bench.results["billing"]["ratio_to_floor"]
        say(f"    create throughput, ledger on / off (the last two rounds of each): {ratio}")


OUTPUT_ROUNDS = 2


def outputs_group(bench: Bench, selected: set[str]) -> None:
    """Issue 18: e2e_image with every image copied into GridFS beside the same run with OUTPUT_STORE=none (the
    vendor's links kept, nothing copied), interleaved none, gridfs, none, gridfs on one stack; the best run of
    each is compared (ratio_to_floor = throughput with / without)."""
    total = bench.plan.e2e_tasks
    with BenchStack("outputs", workers=E2E_WORKERS) as stack:
        say(f"  e2e_image_outputs: {total} Seedream tasks, OUTPUT_STORE none vs gridfs x {OUTPUT_ROUNDS}")
        runs: dict[str, list[dict[str, Any]]] = {"gridfs": [], "none": []}
        for round_number in range(OUTPUT_ROUNDS):
            for store in reversed(runs):  # none first
                stack.stop_dispatcher()
                env = {"WORKER_CONCURRENCY": str(E2E_WORKERS), "OUTPUT_STORE": store}
                stack.local.start("dispatcher", extra_env=env)
                stack.wait_for_workers(E2E_WORKERS)
                reset_data(stack)
                close = window(stack)
                entry = run_e2e(bench, stack, prompt(f"e2e_image_outputs_{store}_{round_number}"), total)
                runs[store].append(entry | close())
                say(f"    {store}: {_line(entry)}")
        with_outputs, without = (max(runs[store], key=lambda run: run["throughput_per_s"]) for store in runs)
        entry = with_outputs | {
            "floor": {"without_outputs": without},
            "ratio_to_floor": round(with_outputs["throughput_per_s"] / without["throughput_per_s"], 3)
            if without["throughput_per_s"]
            else 0.0,
            "runs": runs,
        }
        say(f"    best with outputs / without: ratio {entry['ratio_to_floor']}")
        bench.results["e2e_image_outputs"] = entry


FAIRNESS_WORKERS = 10
FAIRNESS_LATENCY_S = 0.5
FAIRNESS_PATIENCE_S = 60.0


def fairness_group(bench: Bench, selected: set[str]) -> None:
    """Issue 20: user A creates plan.fairness_burst image tasks at once, then user B one task a second for
    plan.fairness_seconds s; B's time to start (create to its upstream call) and A's throughput meanwhile, with
    fair share (FAIR_SHARE_DEPTH's default) beside the same run without (FAIR_SHARE_DEPTH=0). Targets: B's p99
    start delay <= 2 x the mean service time, A's throughput >= 0.9 of the run without."""
    env = {"MAX_INFLIGHT_TASKS_PER_USER": "0"}  # A's burst is far over the per-user cap
    with BenchStack("fairness", workers=FAIRNESS_WORKERS, env=env) as stack:
        say(
            f"  fairness: A creates {bench.plan.fairness_burst} Seedream tasks, then B one a second for "
            f"{bench.plan.fairness_seconds} s; {FAIRNESS_WORKERS} workers, upstream latency {FAIRNESS_LATENCY_S:g} s"
        )
        runs = {}
        for label, depth in (("unfair", "0"), ("fair", "")):
            for name in ("task_service", "task_service_2"):
                stack.local.stop(name)
                stack.local.start(name, extra_env={"FAIR_SHARE_DEPTH": depth} if depth else None)
            runs[label] = run_fairness(bench, stack, label)
            say(f"    {label}: {runs[label]}")
        fair, unfair = runs["fair"], runs["unfair"]
        entry = fair | {
            # The table's columns: A's throughput, B's start delays.
            "throughput_per_s": fair["a_throughput_per_s"],
            "p50_ms": round(fair["b_start_p50_s"] * 1000, 1),
            "p95_ms": round(fair["b_start_p95_s"] * 1000, 1),
            "p99_ms": round(fair["b_start_p99_s"] * 1000, 1),
            "errors": fair["b_tasks"] - fair["b_started"],
            "floor": {"without_fair_share": unfair},
            "ratio_to_floor": round(fair["a_throughput_per_s"] / unfair["a_throughput_per_s"], 3)
            if unfair["a_throughput_per_s"]
            else 0.0,
            "b_p99_over_service_time": round(fair["b_start_p99_s"] / unfair["mean_service_s"], 2)
            if unfair["mean_service_s"]
            else 0.0,
        }
        say(
            f"    B's start p50/p99 {fair['b_start_p50_s']}/{fair['b_start_p99_s']} s with fair share, "
            f"{unfair['b_start_p50_s']}/{unfair['b_start_p99_s']} s without; mean service time "
            f"{unfair['mean_service_s']} s; A's throughput ratio {entry['ratio_to_floor']}"
        )
        bench.results["fairness"] = entry


def run_fairness(bench: Bench, stack: BenchStack, label: str) -> dict[str, Any]:
    """One run: A's burst, then B's trickle; measured while B creates, then everything left is dropped."""
    reset_data(stack)
    with stack.redis() as redis:
        redis.delete(*redis.scan_iter("aitask:fair:*", count=1000), "aitask:fair:none")
    tag_a, tag_b = prompt(f"fairness_{label}_a"), prompt(f"fairness_{label}_b")
    with stack.local.sim() as sim:
        sim.set_faults("ark.images", latency_s=FAIRNESS_LATENCY_S)
        created = load.ghz(
            bench.ghz_path,
            watcher(stack),
            f"127.0.0.1:{stack.ports.envoy}",
            "CreateImageTask",
            IMAGE | {"prompt": tag_a, "user_id": "bench-fair-a"},
            concurrency=50,
            connections=5,
            total=bench.plan.fairness_burst,
        )
        began = time.time()
        b_tasks: dict[str, float] = {}
        with stack.local.rest() as rest:
            for n in range(bench.plan.fairness_seconds):
                marker = f"{tag_b} #{n}"
                created_at = time.time()
                response = rest.post(
                    "/api/v1/ai/image/task", json=IMAGE | {"prompt": marker, "user_id": "bench-fair-b"}
                )
                if response.status_code == 200:
                    b_tasks[marker] = created_at
                time.sleep(max(0.0, created_at + 1.0 - time.time()))
            ended = time.time()
            # Without fair share B's last tasks wait behind all of A's: a task not started by then counts with the
            # wait so far (a lower bound).
            deadline = time.monotonic() + FAIRNESS_PATIENCE_S
            starts: dict[str, float] = {}
            while time.monotonic() < deadline and len(starts) < len(b_tasks):
                for marker in b_tasks:
                    if marker not in starts and (calls := sim.requests(marker)):
                        starts[marker] = calls[0]["at"]
                time.sleep(0.5)
            gave_up = time.time()
        sim.clear_faults()
    trickle = {"$gte": datetime.fromtimestamp(began, UTC), "$lte": datetime.fromtimestamp(ended, UTC)}
    a_done = stack.local.tasks().count_documents(
        {"prompt": tag_a, "status": TaskStatus.COMPLETED.value, "updated": trickle}
    )
    stack.stop_dispatcher()
    reset_data(stack)
    with stack.redis() as redis:
        redis.delete(*redis.scan_iter("aitask:fair:*", count=1000), "aitask:fair:none")
    stack.start_dispatcher(FAIRNESS_WORKERS)
    delays = [starts.get(marker, gave_up) - created for marker, created in b_tasks.items()]
    p50, p95, p99 = percentiles(delays)
    a_throughput = a_done / (ended - began)
    return {
        "a_created": bench.plan.fairness_burst - created.errors,
        "a_throughput_per_s": round(a_throughput, 2),
        # Little's law: every worker busy with A's tasks.
        "mean_service_s": round(FAIRNESS_WORKERS / a_throughput, 3) if a_throughput else 0.0,
        "b_tasks": len(b_tasks),
        "b_started": len(starts),
        "b_start_p50_s": round(p50, 3),
        "b_start_p95_s": round(p95, 3),
        "b_start_p99_s": round(p99, 3),
        "window_s": round(ended - began, 1),
    }


CONSOLE_USERS = 1000
CONSOLE_REPEATS = 5
CONSOLE_TARGET_S = 1.0


def console_group(bench: Bench, selected: set[str]) -> None:
    """Issue 23: each console page's API calls with plan.console_tasks tasks stored (1 % failed, over
    CONSOLE_USERS users): a page's time is its slowest call (the console makes them at once), the median of
    CONSOLE_REPEATS loads. Target: every page within CONSOLE_TARGET_S."""
    with BenchStack("console", workers=1) as stack:
        reset_data(stack)
        began = time.monotonic()
        load_console_tasks(stack, bench.plan.console_tasks)
        say(f"  console: {bench.plan.console_tasks} tasks stored in {time.monotonic() - began:.1f} s")
        sample = stack.local.tasks().find_one({"user_id": "console-user-7"}, {"_id": 1})
        assert sample is not None
        # A page half-way back (tasks are a second apart), by the token the page before it hands out.
        half_way = created_buckets(datetime.now(UTC) - timedelta(seconds=bench.plan.console_tasks // 2))[-1]
        middle = stack.local.tasks().find_one({"created_buckets": half_way}, {"_id": 1, "created": 1})
        assert middle is not None
        deep = next_page_token(middle, ListFilters())  # type: ignore[arg-type]
        hours_ago = [(datetime.now(UTC) - timedelta(hours=hours)).isoformat() for hours in (11, 10)]
        window = urllib.parse.urlencode({"created_after": hours_ago[0], "created_before": hours_ago[1], "limit": 25})
        pages = {
            "overview": [
                "/api/v1/admin/queues",
                "/api/v1/admin/providers",
                "/api/v1/admin/tasks?status=failed&limit=5",
            ],
            "tasks (no filter)": ["/api/v1/admin/tasks?limit=25"],
            "tasks, a page deep by token": [f"/api/v1/admin/tasks?limit=25&page_token={deep}"],
            "tasks in an hour's window": [f"/api/v1/admin/tasks?{window}"],
            "tasks of a user": ["/api/v1/admin/tasks?user_id=console-user-7&limit=25"],
            "failed tasks": ["/api/v1/admin/tasks?status=failed&limit=25"],
            "task detail": [f"/api/v1/admin/task/{sample['_id']}/timeline"],
            "providers": ["/api/v1/admin/providers"],
            "keys": ["/api/v1/admin/keys"],
            "audit log": ["/api/v1/admin/audit?limit=25"],
        }
        seconds: dict[str, float] = {}
        with stack.local.rest() as rest:
            for page, paths in pages.items():
                loads = []
                for _ in range(CONSOLE_REPEATS):
                    calls = []
                    for path in paths:
                        started = time.perf_counter()
                        response = rest.get(path, timeout=60)
                        response.raise_for_status()
                        calls.append(time.perf_counter() - started)
                    loads.append(max(calls))
                seconds[page] = round(statistics.median(loads), 3)
                say(f"    {page}: {seconds[page] * 1000:.0f} ms")
        slowest = max(seconds.values())
        median = statistics.median(seconds.values())
        bench.results["console"] = {
            "tasks": bench.plan.console_tasks,
            "pages_s": seconds,
            # The table's columns: loads per second of the median page; the median and the slowest page.
            "throughput_per_s": round(1 / median, 1) if median else 0.0,
            "p50_ms": round(median * 1000, 1),
            "p95_ms": round(slowest * 1000, 1),
            "p99_ms": round(slowest * 1000, 1),
            "errors": 0,
            "ratio_to_floor": round(CONSOLE_TARGET_S / slowest, 2) if slowest else 0.0,
        }


def load_console_tasks(stack: BenchStack, count: int) -> None:
    """`count` finished image tasks as the services leave them, timeline included, newest last."""
    tasks = stack.local.tasks()
    now = datetime.now(UTC)
    batch: list[dict[str, Any]] = []
    for n in range(count):
        created = now - timedelta(seconds=count - n)
        failed = n % 100 == 0
        user = f"console-user-{n % CONSOLE_USERS}"
        batch.append(
            {
                "_id": str(ULID.from_datetime(created)),
                "type": "image",
                "status": "failed" if failed else "completed",
                "user_id": user,
                **{key: value for key, value in IMAGE.items() if key != "size"},
                "prompt": prompt("console"),
                "parameters": {"priority": "default", "size": IMAGE["size"], "response_format": "url"},
                "attempts": 1,
                "created": created,
                "created_buckets": task_buckets(created, user),
                "updated": created + timedelta(seconds=2),
                "error_message": "ark 400: bad prompt" if failed else "",
                "image_url": "" if failed else "https://example.invalid/image.png",
                "timeline": [
                    {"at": created, "event": "created"},
                    {"at": created, "event": "claimed"},
                    {"at": created + timedelta(seconds=2), "event": "failed" if failed else "completed"},
                ],
            }
        )
        if len(batch) == 5000:
            tasks.insert_many(batch, ordered=False)
            batch = []
    if batch:
        tasks.insert_many(batch, ordered=False)


def scale_group(bench: Bench, selected: set[str]) -> None:
    from bench.harness import scale  # noqa: PLC0415 - it builds on this module's helpers

    scale.scale_group(bench, selected)


def cluster_group(bench: Bench, selected: set[str]) -> None:
    from bench.harness import cluster  # noqa: PLC0415 - it builds on this module's helpers

    cluster.cluster_group(bench, selected)


def soak_group(bench: Bench, selected: set[str]) -> None:
    from bench.harness import soak  # noqa: PLC0415 - it builds on this module's helpers

    soak.soak_group(bench, selected)


GROUP_RUNNERS = {
    "api": api_group,
    "e2e": e2e_group,
    "video": video_group,
    "scaling": scaling_group,
    "watch": watch_group,
    "webhooks": webhooks_group,
    "fairness": fairness_group,
    "outputs": outputs_group,
    "billing": billing_group,
    "console": console_group,
    "scale": scale_group,
    "capacity": capacity_group,
    "soak": soak_group,
    "cluster": cluster_group,
}
