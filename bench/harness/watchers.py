"""The `watch` scenario's client: many concurrent WatchTask streams on one task, each event's arrival timed.

    python -m bench.harness.watchers --target 127.0.0.1:50051 --task-id ID --watchers 1000

Prints `WATCHERS_READY <n>` once every stream has its first event (the harness then changes the task), and
at the end `WATCHERS_JSON {...}`: per event kind and status, the delay from the task's `updated` time (the
write that made the change) to each watcher's receipt, in ms. Runs as its own process, so its CPU shows
apart from the task service's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc

# Streams per HTTP/2 connection (gRPC clients multiplex; this spreads them over a few connections).
STREAMS_PER_CHANNEL = 100


async def watch(
    stub: task_service_pb2_grpc.TaskServiceStub, task_id: str, first: asyncio.Event, timeout: float
) -> list[tuple[str, str, float]]:
    """(event, status, delay ms from the task's update to receipt) for every event after the first."""
    delays = []
    async for event in stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=timeout):
        received = time.time()
        if not first.is_set():
            first.set()
            continue
        delays.append((event.event, event.task.status, (received - event.task.updated.ToMicroseconds() / 1e6) * 1000))
    return delays


async def run(target: str, task_id: str, watchers: int, timeout: float) -> dict[str, Any]:
    channels = [
        grpc.aio.insecure_channel(target) for _ in range((watchers + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL)
    ]
    stubs = [task_service_pb2_grpc.TaskServiceStub(channel) for channel in channels]
    firsts = [asyncio.Event() for _ in range(watchers)]
    started = time.monotonic()
    streams = [
        asyncio.create_task(watch(stubs[index % len(stubs)], task_id, firsts[index], timeout))
        for index in range(watchers)
    ]
    await asyncio.gather(*(first.wait() for first in firsts))
    print(f"WATCHERS_READY {watchers} {time.monotonic() - started:.2f}", flush=True)
    results = await asyncio.gather(*streams, return_exceptions=True)
    for channel in channels:
        await channel.close()
    delays: dict[str, list[float]] = {}
    errors = 0
    for result in results:
        if isinstance(result, BaseException):
            errors += 1
            continue
        for event, status, delay in result:
            delays.setdefault(f"{event}:{status}", []).append(round(delay, 2))
    return {
        "watchers": watchers,
        "errors": errors,
        "connect_s": round(time.monotonic() - started, 2),
        "delays_ms": delays,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--task-id", required=True)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    summary = asyncio.run(run(args.target, args.task_id, args.watchers, args.timeout))
    print("WATCHERS_JSON " + json.dumps(summary), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
