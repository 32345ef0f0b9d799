"""The soak group (issue 24, part 3): plan.soak_seconds of a mix of creates, gets, lists and deletes at half the
capacity measured on the same stack, with the memory of every process sampled throughout.

The soak's client (soak_client.py) creates tasks: 80 % images, 10 % videos (the simulator's default 5 s), 10 % texts;
with two gets per create, a list per four and a delete per ten. The capacity is that mix's, measured first in two
steps: e2e_image's throughput and its CPU per task on this stack (the stack saturated), then the mix's CPU per create
in plan.soak_calibration_s at a quarter of that throughput; the mix's capacity is e2e_image's scaled by the two CPU
costs. (Half of e2e_image's throughput, the rate taken before, kept the stack 90 % busy: the mix's gets, lists,
deletes, polls and texts cost as much CPU again as its creates.)

Every SAMPLE_S the harness records each process's resident memory, Redis's own memory and key counts, the dispatcher's
count of finished tasks and the tasks in flight.

What is judged, after plan.soak_warmup_s: no process grows more than GROWTH_LIMIT, its peak over the run's last
MEMORY_WINDOW_S against its peak over the warm-up's last (a garbage-collected heap, FerretDB's, swings by a fifth
between collections: one sample at the warm-up's end would catch it anywhere in that swing); 0 errors (every request
answered, every task completed); the last DRIFT_WINDOW_S's rate of finished tasks within DRIFT_LIMIT of the first's
after the warm-up. A process's memory is its private memory: its RSS less the shared memory it maps (PostgreSQL's
backends each map the one shared buffer pool, of a fixed size, and count each page of it they touched). Trees (the
dispatcher and its workers, PostgreSQL and its backends, which come and go) are reported whole too, and plotted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aitask_common.queues import watched
from aitask_common.tasks import TaskStatus
from bench.harness.procs import Every, labelled_tree, status_kib
from bench.harness.scenarios import (
    E2E_WORKERS,
    Bench,
    counter,
    per_task,
    percentiles,
    prompt,
    reset_data,
    run_e2e,
    say,
    window,
)
from bench.harness.stack import BenchStack

SAMPLE_S = 10.0
USERS = 200
GROWTH_LIMIT = 0.10
DRIFT_LIMIT = 0.05
DRIFT_WINDOW_S = 300.0
MEMORY_WINDOW_S = 300.0
DRAIN_S = 120.0
FINISHED_METRIC = "aitask_tasks_finished_total"
CREATES = ("image", "video", "text")  # the client's create operations, by task type
# Not judged: the upstream simulator is the one fake, not a process anyone runs in production.
UNJUDGED = ("simulator",)
EACH = "each_process"  # a sample's {pid: (name, private MiB)}: judged, then left out of the results


def soak_group(bench: Bench, selected: set[str]) -> None:
    del selected  # one scenario
    plan = bench.plan
    tag = prompt("soak")
    with BenchStack("soak", workers=E2E_WORKERS) as stack:
        say(f"  soak: capacity first: e2e_image with {plan.e2e_tasks} tasks, the mix for {plan.soak_calibration_s:g} s")
        calibration = price_e2e(bench, stack, plan.e2e_tasks)
        calibration |= price_mix(stack, calibration["e2e_image_per_s"] / 4, plan.soak_calibration_s)
        capacity = round(
            calibration["e2e_image_per_s"] * calibration["cpu_ms_per_e2e_task"] / calibration["cpu_ms_per_mix_create"],
            1,
        )
        rate = round(capacity / 2, 1)
        say(f"    the mix's capacity {capacity}/s; soaking at {rate} creates/s for {plan.soak_seconds:g} s")
        reset_data(stack)
        sampler = Sampler(stack)
        close = window(stack)
        sampler.start()
        client = run_client(stack, rate, plan.soak_seconds, tag)
        drained = drain(stack)
        sampler.stop()
        entry = (
            close()
            | outcome(stack, tag, client, drained)
            | {"capacity_per_s": capacity, "rate_per_s": rate, "calibration": calibration}
        )
    per_task(entry)
    entry |= judge(sampler.samples, client, plan.soak_warmup_s)
    entry["soak_targets"]["0 errors"] = entry["errors"] == 0
    say(
        f"    {entry['completed']} completed, {entry['errors']} errors; largest growth after warm-up "
        f"{entry['largest_growth']['process']} {entry['largest_growth']['percent']} %; drift {entry['drift']}"
    )
    bench.results["soak"] = entry


def price_e2e(bench: Bench, stack: BenchStack, tasks: int) -> dict[str, float]:
    """e2e_image's throughput on an empty store, and its CPU per task (every process of the stack)."""
    reset_data(stack)
    close = window(stack)
    e2e = run_e2e(bench, stack, prompt("soak_capacity"), tasks)
    cpu_s = sum(close()["cpu_s"].values())
    return {
        "e2e_image_per_s": e2e["throughput_per_s"],
        "cpu_ms_per_e2e_task": round(cpu_s * 1000 / e2e["completed"], 2),
    }


def price_mix(stack: BenchStack, rate: float, seconds: float) -> dict[str, float]:
    """The soak's mix at `rate` creates a second for `seconds`, drained: its CPU per create (every process of the
    stack; the client apart)."""
    reset_data(stack)
    close = window(stack)
    client = run_client(stack, round(rate, 1), seconds, prompt("soak_calibration"))
    drain(stack)
    cpu_s = sum(close()["cpu_s"].values())
    return {
        "mix_calibration_per_s": round(rate, 1),
        "cpu_ms_per_mix_create": round(cpu_s * 1000 / client["created"], 2),
    }


class Sampler:
    """Samples the stack every SAMPLE_S seconds on a thread of its own."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.samples: list[dict[str, Any]] = []
        self._every = Every("soak sampler", SAMPLE_S, lambda: self.samples.append(self.sample()))
        self._started = time.monotonic()

    def start(self) -> None:
        self._started = time.monotonic()
        self._every.start()

    def stop(self) -> None:
        self._every.stop()

    def sample(self) -> dict[str, Any]:
        roots = {name: pid for name, pid in self.stack.roots().items() if not name.startswith("load:")}
        rss: dict[str, float] = {}
        private: dict[str, float] = {}
        each: dict[int, tuple[str, float]] = {}
        for pid, (label, stat) in labelled_tree(roots).items():
            process = label.split("/")[0]
            total_kib, shared_kib = status_kib(pid, "VmRSS", "RssShmem").values()
            rss[process] = rss.get(process, 0.0) + total_kib / 1024
            private[process] = private.get(process, 0.0) + (total_kib - shared_kib) / 1024
            each[pid] = (f"{process} ({stat.comm} {pid})", (total_kib - shared_kib) / 1024)
        with self.stack.redis() as redis:
            keyspace = redis.info("keyspace").get("db0", {})
            used = int(redis.info("memory")["used_memory"])
            in_flight = watched(redis)
        return {
            "t_s": round(time.monotonic() - self._started, 1),
            "rss_mib": {name: round(value, 1) for name, value in sorted(rss.items())},
            "private_mib": {name: round(value, 1) for name, value in sorted(private.items())},
            "redis_used_mib": round(used / 2**20, 1),
            "redis_keys": int(keyspace.get("keys", 0)),
            "redis_keys_expiring": int(keyspace.get("expires", 0)),
            "in_flight": in_flight,
            "finished": int(
                counter(f"http://127.0.0.1:{self.stack.ports.metrics_dispatcher}/metrics", FINISHED_METRIC)
            ),
            EACH: each,
        }


def run_client(stack: BenchStack, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """Run soak_client.py through Envoy's gRPC port for `seconds`; its summary."""
    argv = [
        *(sys.executable, "-m", "bench.harness.soak_client", "--target", f"127.0.0.1:{stack.ports.envoy}"),
        *("--rate", str(rate), "--seconds", str(seconds), "--tag", tag, "--users", str(USERS)),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    stack.load_pids["soak_client"] = process.pid
    try:
        stdout, _ = process.communicate(timeout=seconds + 120)
    finally:
        stack.load_pids.pop("soak_client", None)
    lines = [line for line in stdout.splitlines() if line.startswith("SOAK_JSON ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"soak client exited {process.returncode} without its summary")
    summary: dict[str, Any] = json.loads(lines[-1].removeprefix("SOAK_JSON "))
    return summary


def drain(stack: BenchStack) -> bool:
    """Wait up to DRAIN_S for the tasks in flight to finish; whether they did."""
    deadline = time.monotonic() + DRAIN_S
    with stack.redis() as redis:
        while watched(redis) and time.monotonic() < deadline:
            time.sleep(1)
        return not watched(redis)


def outcome(stack: BenchStack, tag: str, client: dict[str, Any], drained: bool) -> dict[str, Any]:
    """The soak's tasks by final status (those the client deleted are gone), create → completed per type (p50, p95,
    p99; images' in the table's row), its requests and their errors."""
    statuses: dict[str, int] = {}
    latencies: dict[str, list[float]] = {}
    for document in stack.local.tasks().find({"prompt": tag}, {"status": 1, "type": 1, "created": 1, "updated": 1}):
        statuses[document["status"]] = statuses.get(document["status"], 0) + 1
        if document["status"] == TaskStatus.COMPLETED.value:
            took = (document["updated"] - document["created"]).total_seconds() * 1000
            latencies.setdefault(document["type"], []).append(took)
    by_type = {kind: [round(value, 1) for value in percentiles(values)] for kind, values in sorted(latencies.items())}
    p50, p95, p99 = by_type.get("image", [0.0, 0.0, 0.0])
    requests: dict[str, dict[str, Any]] = {}
    for interval in client["intervals"]:
        for operation, figures in interval["operations"].items():
            total = requests.setdefault(operation, {"ok": 0, "errors": {}, "shed": 0})
            total["ok"] += figures["ok"]
            total["shed"] += figures["shed"]
            for code, n in figures["errors"].items():
                total["errors"][code] = total["errors"].get(code, 0) + n
    request_errors = sum(sum(total["errors"].values()) + total["shed"] for total in requests.values())
    completed = statuses.get(TaskStatus.COMPLETED.value, 0)
    not_completed = sum(n for status, n in statuses.items() if status != TaskStatus.COMPLETED.value)
    return {
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "latency_ms_by_type": by_type,
        "created": client["created"],
        "completed": completed,
        "statuses": statuses,
        "requests": requests,
        "errors": request_errors + not_completed,
        "drained": drained,
        "client_intervals": client["intervals"],
    }


def judge(samples: list[dict[str, Any]], client: dict[str, Any], warmup_s: float) -> dict[str, Any]:
    """Growth after the warm-up of each process alive at its end and of each tree (a process and its children: the
    dispatcher's workers, PostgreSQL's backends, which come and go), drift of the finishing rate, the targets;
    the samples are kept for the plot."""
    at_warmup = [sample for sample in samples if sample["t_s"] <= warmup_s][-1]
    after = [sample for sample in samples if sample["t_s"] > warmup_s]
    span = min(MEMORY_WINDOW_S, warmup_s)
    end = max(sample["t_s"] for sample in samples)
    warmup_window = [sample for sample in samples if warmup_s - span <= sample["t_s"] <= warmup_s]
    last_window = [sample for sample in after if sample["t_s"] >= end - span]
    growth: dict[str, dict[str, Any]] = {}
    for tree, start in at_warmup["private_mib"].items():
        peak = max(sample["private_mib"].get(tree, 0.0) for sample in after)
        growth[tree] = {
            "tree_at_warmup_mib": start,
            "tree_peak_after_mib": peak,
            "tree_percent": percent(start, peak),
            "tree_rss_at_warmup_mib": at_warmup["rss_mib"].get(tree),
            "tree_rss_peak_after_mib": max(sample["rss_mib"].get(tree, 0.0) for sample in after),
            "percent": None,
        }
    for pid, (name, start) in at_warmup[EACH].items():
        held = process_growth(pid, warmup_window, last_window)
        if held is None:
            continue  # ended before the run did (a PostgreSQL backend)
        entry = growth[name.split(" ")[0]]
        if entry["percent"] is None or held["percent"] >= entry["percent"]:
            peak = max((sample[EACH][pid][1] for sample in after if pid in sample[EACH]), default=start)
            entry |= held | {
                "process": name,
                "at_warmup_mib": round(start, 1),
                "peak_after_mib": round(peak, 1),
                "percent_peak_over_warmup_sample": percent(start, peak),
            }
    judged = [tree for tree in growth if tree not in UNJUDGED and growth[tree]["percent"] is not None]
    largest = max(judged, key=lambda tree: growth[tree]["percent"])
    first = rate_between(samples, warmup_s, warmup_s + DRIFT_WINDOW_S)
    last = rate_between(samples, end - DRIFT_WINDOW_S, end)
    drift = round(last / first - 1, 3) if first else None
    created = [
        sum(figures["ok"] for name, figures in interval["operations"].items() if name in CREATES)
        for interval in client["intervals"]
    ]
    return {
        "throughput_per_s": first,
        "growth_after_warmup": growth,
        "memory_window_s": span,
        "largest_growth": {"process": growth[largest]["process"], "percent": growth[largest]["percent"]},
        "finished_per_s": {"after_warmup": first, "last": last},
        "created_per_interval": created,
        "drift": drift,
        "redis": {
            key: [at_warmup[key], after[-1][key]] for key in ("redis_used_mib", "redis_keys", "redis_keys_expiring")
        },
        "samples": [{key: value for key, value in sample.items() if key != EACH} for sample in samples],
        "soak_targets": {
            f"no process grows > {GROWTH_LIMIT:.0%} after warm-up": growth[largest]["percent"] <= GROWTH_LIMIT * 100,
            f"finishing rate drifts < {DRIFT_LIMIT:.0%}": drift is not None and abs(drift) <= DRIFT_LIMIT,
        },
    }


def process_growth(
    pid: int, warmup_window: list[dict[str, Any]], last_window: list[dict[str, Any]]
) -> dict[str, float] | None:
    """A process's peak over the last window against its peak over the warm-up's last; None if it was not
    sampled in both."""
    before = [sample[EACH][pid][1] for sample in warmup_window if pid in sample[EACH]]
    now = [sample[EACH][pid][1] for sample in last_window if pid in sample[EACH]]
    if not before or not now:
        return None
    return {
        "warmup_window_peak_mib": round(max(before), 1),
        "last_window_peak_mib": round(max(now), 1),
        "percent": percent(max(before), max(now)),
    }


def percent(start: float, peak: float) -> float:
    return round((peak / start - 1) * 100, 1) if start else 0.0


def rate_between(samples: list[dict[str, Any]], start: float, end: float) -> float:
    """Tasks finished per second between the samples nearest `start` and `end`."""
    first = min(samples, key=lambda sample: abs(sample["t_s"] - start))
    last = min(samples, key=lambda sample: abs(sample["t_s"] - end))
    span = last["t_s"] - first["t_s"]
    return round((last["finished"] - first["finished"]) / span, 2) if span > 0 else 0.0
