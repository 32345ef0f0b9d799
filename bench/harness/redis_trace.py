"""Which process sends which Redis commands for a task: `python -m bench.harness.redis_trace [--tasks 300]`.

Starts a bench stack, MONITORs its Redis first for IDLE_S seconds with nothing to do (what the loops cost on their
own), then while `--tasks` Seedream tasks are created CONCURRENCY at a time and completed. Prints the commands per
task by process and by command, most first, with the idle rate taken out. A client is told by its connection's
port, matched to the process that holds it through `ss -tnp`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import threading
import time
from collections import Counter, defaultdict

import grpc
from redis import Redis

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common.queues import watched
from bench.harness.procs import labelled_tree
from bench.harness.scenarios import E2E_WORKERS, IMAGE, prompt, say
from bench.harness.stack import BenchStack

IDLE_S = 10.0
# Task ids (ULIDs), RQ job and execution ids (UUIDs, hex) and users' names inside key names.
ID = re.compile(
    r"[0-9A-HJKMNP-TV-Z]{26}|[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}|[0-9a-f]{32}|trace-u\d+"
)
CONCURRENCY = 20


class Monitor:
    """Counts (client port, command) from a MONITOR connection on a thread of its own."""

    def __init__(self, stack: BenchStack) -> None:
        self.redis = stack.redis()
        self.counts: Counter[tuple[int, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        port = 0
        with self.redis.monitor() as monitor:
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                # A script's own commands show as from "lua", right after the EVAL that ran them.
                if command["client_type"] == "tcp":
                    port = int(command["client_port"])
                name = command["command"].split(" ", 1)[0].strip('"').lower()
                self.counts[(port, name if command["client_type"] == "tcp" else f"{name} (in a script)")] += 1

    def start(self) -> None:
        self._thread.start()

    def take(self) -> Counter[tuple[int, str]]:
        """The counts so far, and start again from zero."""
        counts, self.counts = self.counts, Counter()
        return counts


def owners(stack: BenchStack) -> dict[int, str]:
    """Local port -> stack process name, for every loopback TCP connection a stack process holds."""
    labels = {pid: label.split("/")[0] for pid, (label, _) in labelled_tree(stack.roots()).items()}
    found = {}
    for line in subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        local_port = int(fields[3].rsplit(":", 1)[-1])
        for pid in map(int, re.findall(r"pid=(\d+)", fields[5])):
            if pid in labels:
                found[local_port] = labels[pid]
    return found


async def create(target: str, tasks: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int) -> None:
            async with limit:
                await stub.CreateImageTask(
                    pb.CreateImageTaskRequest(user_id=f"trace-u{n % 100}", prompt=prompt("redis_trace"), **IMAGE),
                    timeout=30,
                )

        await asyncio.gather(*(one(n) for n in range(tasks)))


def memory_by_pattern(redis: Redis) -> dict[str, tuple[int, int, int]]:
    """{key pattern: (keys, bytes by MEMORY USAGE, keys with a TTL)}, the ids in key names replaced by `*`."""
    kept: dict[str, tuple[int, int, int]] = {}
    for key in redis.scan_iter(count=1000):
        pattern = ID.sub("*", key.decode(errors="replace"))
        keys, size, expiring = kept.get(pattern, (0, 0, 0))
        kept[pattern] = (keys + 1, size + (redis.memory_usage(key) or 0), expiring + (redis.ttl(key) >= 0))
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=300)
    args = parser.parse_args()
    with BenchStack("redis-trace", workers=E2E_WORKERS) as stack:
        monitor = Monitor(stack)
        monitor.start()
        time.sleep(IDLE_S)
        idle = monitor.take()
        began = time.monotonic()
        asyncio.run(create(f"127.0.0.1:{stack.ports.envoy}", args.tasks))
        with stack.redis() as redis:
            while watched(redis):
                time.sleep(0.2)
        busy_s = time.monotonic() - began
        ports = owners(stack)
        busy = monitor.take()
        with stack.redis() as redis:
            kept = memory_by_pattern(redis)
    idle_share = busy_s / IDLE_S
    by_process: defaultdict[str, float] = defaultdict(float)
    by_command: defaultdict[tuple[str, str], float] = defaultdict(float)
    for key in set(busy) | set(idle):
        port, command = key
        extra = busy[key] - idle[key] * idle_share
        process = ports.get(port, "(gone or bench)")
        by_process[process] += extra
        by_command[(process, command)] += extra
    total = sum(by_process.values())
    say(f"{args.tasks} tasks in {busy_s:.1f} s; {total / args.tasks:.1f} commands per task beyond the idle rate")
    say(f"idle: {sum(idle.values()) / IDLE_S:.1f} commands/s")
    for process, n in sorted(by_process.items(), key=lambda item: -item[1]):
        say(f"  {process:<36}{n / args.tasks:7.1f}")
        for (owner, command), m in sorted(by_command.items(), key=lambda item: -item[1]):
            if owner == process and m / args.tasks >= 0.05:
                say(f"      {command:<32}{m / args.tasks:7.2f}")
    say("what Redis holds afterwards, by key pattern (bytes per task; keys; keys with a TTL):")
    for pattern, (keys, size, expiring) in sorted(kept.items(), key=lambda item: -item[1][1]):
        if size / args.tasks >= 10:
            say(f"  {pattern:<60}{size / args.tasks:9.0f}{keys:8}{expiring:8}")


if __name__ == "__main__":
    main()
