"""Ratios, targets, the printed table, the JSON files and the scaling plot."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.processes import FERRETDB, ROOT

RSS_LIMIT_MIB = 500


def finalize(results: dict[str, dict[str, Any]]) -> None:
    """Ratios that need two scenarios of the same run, and the issue's targets, added in place."""
    floor = results.get("floor", {})
    for name, floor_entry in (("create_rest", floor), ("create_grpc", floor), ("get_rest", floor.get("read", {}))):
        entry = results.get(name)
        if entry and "throughput_per_s" in entry and floor_entry.get("throughput_per_s"):
            entry["ratio_to_floor"] = round(entry["throughput_per_s"] / floor_entry["throughput_per_s"], 3)
    rest, grpc = results.get("create_rest", {}), results.get("create_grpc", {})
    if rest.get("throughput_per_s") and grpc.get("throughput_per_s"):
        grpc["rest_to_grpc"] = round(rest["throughput_per_s"] / grpc["throughput_per_s"], 3)
    for name, entry in results.items():
        if "throughput_per_s" in entry:
            entry["targets"] = {text: met for text, met in _targets(name, entry)}


def _paced_p99_within(e: dict[str, Any], key: str, rate: float, limit_ms: float) -> bool | None:
    """The latency target, judged at the target rate offered (closed loop, Little's law decides it:
    bench/README.md); a paced run that fell 5 % short of the rate it offered does not count."""
    paced = e.get(key)
    if paced is None:
        return None
    return paced["throughput_per_s"] >= 0.95 * rate and paced["p99_ms"] <= limit_ms


def _targets(name: str, e: dict[str, Any]) -> list[tuple[str, bool | None]]:
    rss = e.get("max_rss_mib")
    if name == "create_rest":
        return [
            ("throughput >= 1000/s", e["throughput_per_s"] >= 1000),
            ("0 errors", e["errors"] == 0),
            ("p99 <= 250 ms paced at 1000/s", _paced_p99_within(e, "paced_1000_per_s", 1000, 250)),
            ("ratio_to_floor >= 0.5", None if "ratio_to_floor" not in e else e["ratio_to_floor"] >= 0.5),
        ]
    if name == "create_grpc":
        return [("REST >= 0.8 of gRPC", None if "rest_to_grpc" not in e else e["rest_to_grpc"] >= 0.8)]
    if name == "get_rest":
        return [
            ("throughput >= 2000/s", e["throughput_per_s"] >= 2000),
            ("p99 <= 100 ms paced at 2000/s", _paced_p99_within(e, "paced_2000_per_s", 2000, 100)),
        ]
    if name == "e2e_image":
        floor = e.get("floor", {}).get("rq_noop_jobs", {}).get("throughput_per_s")
        return [
            ("throughput >= 150/s", e["throughput_per_s"] >= 150),
            (
                "issue 24: >= 300/s or >= 0.4 x RQ's no-op floor",
                e["throughput_per_s"] >= 300 or (floor is not None and e["throughput_per_s"] >= 0.4 * floor),
            ),
        ]
    if name == "e2e_image_light":
        return [("issue 24: p99 <= 50 ms paced at 20/s", e["p99_ms"] <= 50 and e["errors"] == 0)]
    if name == "e2e_image_slow_upstream":
        return [("throughput = workers / 3 s within 10 %", abs(e.get("ratio_to_floor", 0) - 1) <= 0.10)]
    if name == "video_in_flight":
        return [
            ("all complete", e["completed"] == e["tasks"]),
            ("each within 5 s of the upstream", e["completed_within_5s"] == e["tasks"]),
            (f"no process above {RSS_LIMIT_MIB} MiB", rss is not None and rss <= RSS_LIMIT_MIB),
        ]
    if name == "fairness":
        return [
            ("B's p99 start <= 2 x service time", e["b_p99_over_service_time"] <= 2),
            ("A's throughput >= 0.9 of unfair", e["ratio_to_floor"] >= 0.9),
        ]
    if name == "billing":
        return [("ledger on >= 0.85 of off", e["ratio_to_floor"] >= 0.85), ("0 errors", e["errors"] == 0)]
    if name == "scale":
        return list(e["scale_targets"].items())
    if name == "soak":
        return list(e["soak_targets"].items())
    if name == "console":
        return [("every page within 1 s", e["p99_ms"] <= 1000)]
    if name == "watch":
        return [
            ("every watcher got every event", e["errors"] == 0),
            (f"no process above {RSS_LIMIT_MIB} MiB", rss is not None and rss <= RSS_LIMIT_MIB),
        ]
    return []


def table(results: dict[str, dict[str, Any]]) -> str:
    """The results as a fixed-width table, one row per scenario (and per scaling point)."""
    head = (
        f"{'scenario':<26}{'tput/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'ratio':>8}"
        f"{'maxRSS':>8}  targets"
    )
    rows = [head, "-" * len(head)]

    def row(name: str, e: dict[str, Any]) -> str:
        ratio = e.get("ratio_to_floor")
        rss = e.get("max_rss_mib")
        marks = "  ".join(
            f"{'OK' if met else ('--' if met is None else 'MISS')} {text}"
            for text, met in (e.get("targets") or {}).items()
        )
        return (
            f"{name:<26}{e['throughput_per_s']:>9.1f}{e['p50_ms']:>9.1f}{e['p95_ms']:>9.1f}{e['p99_ms']:>9.1f}"
            f"{e.get('errors', ''):>8}{'' if ratio is None else f'{ratio:.2f}':>8}"
            f"{'' if rss is None else f'{rss:.0f}':>8}  {marks}"
        )

    for name, entry in results.items():
        if "error" in entry:
            rows.append(f"{name:<26}FAILED: {entry['error'][:100]}")
            continue
        if "throughput_per_s" in entry:
            rows.append(row(name, entry))
        if name == "floor" and "read" in entry:
            rows.append(row("  floor (read)", entry["read"]))
        for key in ("paced_1000_per_s", "paced_2000_per_s"):
            if key in entry:
                rows.append(row(f"  paced at {key.split('_')[1]}/s", entry[key]))
        if name == "create_grpc" and "rest_to_grpc" in entry:
            rows.append(f"  REST / gRPC throughput: {entry['rest_to_grpc']:.2f}")
        for point in entry.get("curve", []):
            rows.append(row(f"  {point['workers']:>2} workers", point))
    return "\n".join(rows)


def scaling_curve(curve: list[dict[str, Any]]) -> str:
    """An ASCII bar per worker count."""
    top = max(max(point["throughput_per_s"], point["floor_per_s"]) for point in curve) or 1.0
    lines = ["tasks/s by workers (# = measured, | = RQ no-op floor)"]
    for point in curve:
        bar = "#" * int(50 * point["throughput_per_s"] / top)
        floor_at = int(50 * point["floor_per_s"] / top)
        bar = bar.ljust(floor_at) + "|" if floor_at >= len(bar) else bar
        lines.append(f"  {point['workers']:>2} {bar} {point['throughput_per_s']:.1f}")
    return "\n".join(lines)


def plot_scaling(curve: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels against worker count: end-to-end tasks/s (with linear scaling from one worker), and
    RQ's no-op floor measured at the same worker count."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    workers = [point["workers"] for point in curve]
    measured = [point["throughput_per_s"] for point in curve]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    left.plot(workers, measured, "o-", label="end to end (Seedream, upstream latency 0)")
    left.plot(workers, [measured[0] * n for n in workers], ":", color="grey", label="linear from 1 worker")
    left.set_ylim(0, 1.5 * max(measured))
    left.set_ylabel("tasks completed per second")
    right.plot(
        workers,
        [point["floor_per_s"] for point in curve],
        "s--",
        color="tab:orange",
        label="RQ floor: no-op jobs, same pool",
    )
    right.set_ylim(0, 1.15 * max(point["floor_per_s"] for point in curve))
    right.set_ylabel("jobs per second")
    for axes in (left, right):
        axes.set_xscale("log", base=2)
        axes.set_xticks(workers, [str(n) for n in workers])
        axes.set_xlabel("dispatcher workers (SimpleWorker processes)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, loc="upper left")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def plot_soak(samples: list[dict[str, Any]], warmup_s: float, path: Path, title: str) -> None:
    """Three panels against minutes of soak: each process's private memory, Redis's own memory, and tasks finished
    per second with the tasks in flight; a dotted line at the end of the warm-up."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    minutes = [sample["t_s"] / 60 for sample in samples]
    figure, (memory, redis, rate) = pyplot.subplots(3, 1, figsize=(10, 10), dpi=110, sharex=True)
    for process in sorted(samples[-1]["private_mib"]):
        memory.plot(minutes, [sample["private_mib"].get(process) for sample in samples], label=process)
    memory.set_yscale("log")
    memory.set_ylabel("private memory, MiB (RSS less shared)")
    memory.legend(fontsize=7, ncol=3, loc="upper left")
    redis.plot(minutes, [sample["redis_used_mib"] for sample in samples], label="Redis used_memory, MiB")
    keys = redis.twinx()
    keys.plot(
        minutes,
        [sample["redis_keys"] - sample["redis_keys_expiring"] for sample in samples],
        "--",
        color="tab:red",
        label="keys without a TTL",
    )
    keys.set_ylabel("keys without a TTL")
    redis.set_ylabel("MiB")
    redis.legend(fontsize=7, loc="upper left")
    keys.legend(fontsize=7, loc="lower right")
    pairs = list(zip(samples, samples[1:], strict=False))
    rate.plot(
        [later["t_s"] / 60 for _, later in pairs],
        [(later["finished"] - earlier["finished"]) / (later["t_s"] - earlier["t_s"]) for earlier, later in pairs],
        label="tasks finished per second",
    )
    rate.plot(minutes, [sample["in_flight"] for sample in samples], ":", label="tasks in flight")
    rate.set_xlabel("minutes")
    rate.legend(fontsize=7, loc="upper left")
    for axes in (memory, redis, rate):
        axes.axvline(warmup_s / 60, color="grey", linestyle=":")
        axes.grid(True, alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def _output(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    ghz_module = _output(["go", "version", "-m", str(ROOT / ".local" / "bin" / "ghz")]) if shutil.which("go") else None
    ghz_version = re.search(r"mod\s+github.com/bojand/ghz\s+(\S+)", ghz_module or "")
    wrk_version = (_output(["wrk", "-v"]) or "").splitlines()
    postgres = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "wrk": wrk_version[0] if wrk_version else None,
        "ghz": ghz_version.group(1) if ghz_version else None,
        "redis": _output(["redis-server", "--version"]),
        "postgres": _output([str(postgres[-1]), "--version"]) if postgres else None,
        "ferretdb": "v1.24.2 (" + str(FERRETDB.relative_to(ROOT)) + ")",
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def revision() -> dict[str, Any]:
    """The commit measured and whether the work tree differed from it."""
    status = _output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": _output(["git", "rev-parse", "--short", "HEAD"]), "uncommitted_changes": bool(status)}


def write(results: dict[str, dict[str, Any]], meta: dict[str, Any], out_dir: Path, suffix: str) -> list[Path]:
    """latest.json and a dated copy; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta} | results
    text = json.dumps(document, indent=2, default=str) + "\n"
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ")
    paths = [out_dir / "latest.json", out_dir / f"{stamp}{suffix}.json"]
    for path in paths:
        path.write_text(text)
    return paths
