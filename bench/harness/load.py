"""Load from established tools: wrk (REST, a Lua script per request shape) and ghz (native gRPC)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.processes import ROOT

LUA = Path(__file__).resolve().parent / "lua"
DESCRIPTOR = ROOT / "gateway" / "aitask.pb"
SERVICE = "aitask.v1.TaskService"
# wrk threads: one per core of the 2-core machine.
WRK_THREADS = 2
REQUEST_TIMEOUT_S = 10


@dataclass
class LoadResult:
    """What one load run measured; latencies in ms."""

    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput_per_s(self) -> float:
        """Successful requests per second."""
        return (self.requests - self.errors) / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "throughput_per_s": round(self.throughput_per_s, 1),
            "p50_ms": round(self.p50_ms, 1),
            "p95_ms": round(self.p95_ms, 1),
            "p99_ms": round(self.p99_ms, 1),
            "errors": self.errors,
            "requests": self.requests,
            "duration_s": round(self.duration_s, 1),
        }


Watch = Callable[[str, int | None], None]


def _run(argv: list[str], watch: Watch, name: str, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a load tool to completion, registering its pid with `watch` while it runs; return stdout."""
    before = children_cpu_seconds()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | (env or {})
    )
    watch(name, process.pid)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise RuntimeError(f"{name} did not finish within {timeout:.0f} s: {stderr[-1000:]}") from None
    except BaseException:  # interrupted: leave no load running behind
        process.kill()
        process.wait()
        raise
    finally:
        watch(name, None)
    if process.returncode != 0:
        raise RuntimeError(f"{name} exited {process.returncode}: {stderr[-2000:]}\n{stdout[-2000:]}")
    LAST_CPU_SECONDS[name] = round(children_cpu_seconds() - before, 1)
    return stdout


# CPU seconds the last run of each tool used (the load competes with the stack for the same 2 cores).
LAST_CPU_SECONDS: dict[str, float] = {}


def children_cpu_seconds() -> float:
    """User + system CPU of this process's reaped children: the load tools (stack processes are reaped only
    when they stop)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(
    wrk_path: str,
    watch: Watch,
    base_url: str,
    script: str,
    script_args: list[str],
    connections: int,
    duration_s: float,
    rate: float | None = None,
) -> LoadResult:
    """wrk with `lua/<script>`: a closed loop of `connections` connections, or paced at `rate` requests/s."""
    argv = [
        wrk_path,
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{int(duration_s)}s",
        f"--timeout={REQUEST_TIMEOUT_S}s",
        "-s",
        str(LUA / script),
        base_url,
        "--",
        *script_args,
    ]
    env = {"BENCH_RATE": str(rate), "BENCH_CONNECTIONS": str(connections)} if rate else {}
    out = _run(argv, watch, "wrk", duration_s + 60, env)
    line = next((line for line in out.splitlines() if line.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out[-2000:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    latency = data["latency_us"]
    return LoadResult(
        requests=data["requests"],
        errors=sum(data["errors"].values()),
        duration_s=data["duration_us"] / 1e6,
        p50_ms=latency["p50"] / 1000,
        p95_ms=latency["p95"] / 1000,
        p99_ms=latency["p99"] / 1000,
        detail={
            "tool": "wrk",
            "tool_cpu_s": LAST_CPU_SECONDS.get("wrk"),
            "connections": connections,
            "threads": WRK_THREADS,
            "error_kinds": data["errors"],
            "mean_ms": round(latency["mean"] / 1000, 1),
            "max_ms": round(latency["max"] / 1000, 1),
        }
        | ({"offered_rate_per_s": rate} if rate else {}),
    )


def ghz(
    ghz_path: str,
    watch: Watch,
    target: str,
    method: str,
    data: dict[str, Any],
    concurrency: int,
    connections: int,
    duration_s: float | None = None,
    total: int | None = None,
    rate: float | None = None,
) -> LoadResult:
    """ghz calling `method` of the TaskService for `duration_s` seconds or `total` calls.

    With a duration, calls still in flight when it ends are left out (`--duration-stop=ignore`),
    as wrk does, instead of being counted as cancelled errors.
    """
    argv = [
        ghz_path,
        "--insecure",
        "--protoset",
        str(DESCRIPTOR),
        "--call",
        f"{SERVICE}.{method}",
        "-d",
        json.dumps(data),
        "-c",
        str(concurrency),
        "--connections",
        str(connections),
        "--timeout",
        f"{REQUEST_TIMEOUT_S}s",
        "-O",
        "json",
    ]
    if duration_s is not None:
        argv += ["-z", f"{int(duration_s)}s", "--duration-stop", "ignore"]
    if total is not None:
        argv += ["-n", str(total)]
    if rate:
        argv += ["--rps", str(int(rate))]
    argv.append(target)
    out = _run(argv, watch, "ghz", (duration_s or 0) + 300)
    report = json.loads(out)
    codes = report.get("statusCodeDistribution") or {}
    ok = codes.get("OK", 0)
    count = report["count"]
    percentiles = {entry["percentage"]: entry["latency"] / 1e6 for entry in report.get("latencyDistribution") or []}
    errors = {message: n for message, n in (report.get("errorDistribution") or {}).items()}
    return LoadResult(
        requests=count,
        errors=count - ok,
        duration_s=report["total"] / 1e9,
        p50_ms=percentiles.get(50, 0.0),
        p95_ms=percentiles.get(95, 0.0),
        p99_ms=percentiles.get(99, 0.0),
        detail={
            "tool": "ghz",
            "tool_cpu_s": LAST_CPU_SECONDS.get("ghz"),
            "concurrency": concurrency,
            "connections": connections,
            "status_codes": codes,
            "mean_ms": round(report["average"] / 1e6, 1),
            "max_ms": round(report["slowest"] / 1e6, 1),
            "error_kinds": dict(list(errors.items())[:5]),
        }
        | ({"offered_rate_per_s": rate} if rate else {}),
    )
