"""The soak scenario's client: an open-loop mix of creates, gets, lists and deletes at a fixed rate.

    python -m bench.harness.soak_client --target 127.0.0.1:8080 --rate 30 --seconds 1800 --tag PROMPT --users 200

Each second it starts `rate` creates (CREATE_MIX of images, videos and texts), and per create GETS_PER_CREATE gets
of tasks it made in the last GET_WINDOW_S seconds (clients polling), LISTS_PER_CREATE first pages of a user's list
and DELETES_PER_CREATE deletes of its oldest tasks once they are DELETE_AFTER_S old (so a get never races a delete).
Requests start on schedule whether or not earlier ones have answered; one that would exceed MAX_IN_FLIGHT is not
started and counted as shed. At the end it prints `SOAK_JSON {...}`: per INTERVAL_S window and per operation, the
count, errors by status code and p50/p99 latency in ms. Runs as its own process, so its CPU shows apart from the
stack's.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc

CREATE_MIX = (("image", 0.8), ("video", 0.1), ("text", 0.1))
GETS_PER_CREATE = 2.0
LISTS_PER_CREATE = 0.25
DELETES_PER_CREATE = 0.1
GET_WINDOW_S = 30.0
DELETE_AFTER_S = 120.0
INTERVAL_S = 60.0
TICK_S = 0.05
MAX_IN_FLIGHT = 2000
CALL_TIMEOUT_S = 10.0
CHANNELS = 4


class Soak:
    """The schedule, the tasks made so far, and what each request measured."""

    def __init__(self, stubs: list[task_service_pb2_grpc.TaskServiceStub], tag: str, users: int) -> None:
        self.stubs = stubs
        self.tag = tag
        self.users = [f"soak-u{n}" for n in range(users)]
        self.created_at: list[float] = []  # monotonic, ascending
        self.created_ids: list[str] = []
        self.deleted_upto = 0  # created_ids[:deleted_upto] are deleted (or being deleted)
        self.started = time.monotonic()
        # interval -> operation -> {"latencies_ms": [...], "errors": {code: n}, "shed": n}
        self.windows: dict[int, dict[str, dict[str, Any]]] = {}

    def _record(self, operation: str, began: float, code: str | None) -> None:
        window = self.windows.setdefault(int((began - self.started) // INTERVAL_S), {})
        entry = window.setdefault(operation, {"latencies_ms": [], "errors": {}, "shed": 0})
        if code is None:
            entry["latencies_ms"].append((time.monotonic() - began) * 1000)
        else:
            entry["errors"][code] = entry["errors"].get(code, 0) + 1

    async def _call(
        self, operation: str, call: Callable[[task_service_pb2_grpc.TaskServiceStub], Awaitable[Any]]
    ) -> Any:
        began = time.monotonic()
        try:
            response = await call(random.choice(self.stubs))
        except grpc.aio.AioRpcError as error:
            self._record(operation, began, error.code().name)
            return None
        self._record(operation, began, None)
        return response

    async def create(self) -> None:
        kind = random.choices([kind for kind, _ in CREATE_MIX], [share for _, share in CREATE_MIX])[0]
        common = {"prompt": self.tag, "user_id": random.choice(self.users)}
        if kind == "image":
            request: Any = pb.CreateImageTaskRequest(
                provider="volcengine", model="doubao-seedream-3-0-t2i-250415", size="1024x1024", **common
            )
            response = await self._call(kind, lambda stub: stub.CreateImageTask(request, timeout=CALL_TIMEOUT_S))
        elif kind == "video":
            request = pb.CreateVideoTaskRequest(
                provider="volcengine", model="jimeng_vgfm_t2v_l20", aspect_ratio="16:9", **common
            )
            response = await self._call(kind, lambda stub: stub.CreateVideoTask(request, timeout=CALL_TIMEOUT_S))
        else:
            request = pb.CreateTextTaskRequest(provider="openai", model="gpt-4", max_tokens=100, **common)
            response = await self._call(kind, lambda stub: stub.CreateTextTask(request, timeout=CALL_TIMEOUT_S))
        if response is not None:
            self.created_at.append(time.monotonic())
            self.created_ids.append(response.data.task_id)

    async def get(self) -> None:
        recent = max(self.deleted_upto, bisect.bisect_left(self.created_at, time.monotonic() - GET_WINDOW_S))
        if recent >= len(self.created_ids):
            return
        request = pb.GetTaskResultRequest(task_id=self.created_ids[random.randrange(recent, len(self.created_ids))])
        await self._call("get", lambda stub: stub.GetTaskResult(request, timeout=CALL_TIMEOUT_S))

    async def list(self) -> None:
        request = pb.ListTasksRequest(user_id=random.choice(self.users), limit=25)
        await self._call("list", lambda stub: stub.ListTasks(request, timeout=CALL_TIMEOUT_S))

    async def delete(self) -> None:
        index = self.deleted_upto
        if index >= len(self.created_ids) or self.created_at[index] > time.monotonic() - DELETE_AFTER_S:
            return
        self.deleted_upto += 1
        request = pb.DeleteTaskRequest(task_id=self.created_ids[index])
        await self._call("delete", lambda stub: stub.DeleteTask(request, timeout=CALL_TIMEOUT_S))

    async def run(self, rate: float, seconds: float) -> None:
        schedule = (
            (self.create, rate),
            (self.get, rate * GETS_PER_CREATE),
            (self.list, rate * LISTS_PER_CREATE),
            (self.delete, rate * DELETES_PER_CREATE),
        )
        owed = [0.0] * len(schedule)
        pending: set[asyncio.Task[None]] = set()
        last = self.started
        while (now := time.monotonic()) - self.started < seconds:
            for index, (operation, per_second) in enumerate(schedule):
                owed[index] += per_second * (now - last)
                while owed[index] >= 1:
                    owed[index] -= 1
                    if len(pending) >= MAX_IN_FLIGHT:
                        self._shed(operation.__name__)
                        continue
                    task = asyncio.create_task(operation())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            last = now
            await asyncio.sleep(TICK_S)
        await asyncio.gather(*pending)

    def _shed(self, operation: str) -> None:
        window = self.windows.setdefault(int((time.monotonic() - self.started) // INTERVAL_S), {})
        window.setdefault(operation, {"latencies_ms": [], "errors": {}, "shed": 0})["shed"] += 1

    def summary(self) -> dict[str, Any]:
        intervals = []
        for index in sorted(self.windows):
            operations = {}
            for operation, entry in sorted(self.windows[index].items()):
                latencies = sorted(entry["latencies_ms"])
                operations[operation] = {
                    "ok": len(latencies),
                    "errors": entry["errors"],
                    "shed": entry["shed"],
                    "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
                    "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1)
                    if latencies
                    else None,
                }
            intervals.append({"start_s": index * INTERVAL_S, "operations": operations})
        return {"interval_s": INTERVAL_S, "created": len(self.created_ids), "intervals": intervals}


async def main_async(target: str, rate: float, seconds: float, tag: str, users: int) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    soak = Soak([task_service_pb2_grpc.TaskServiceStub(channel) for channel in channels], tag, users)
    await soak.run(rate, seconds)
    for channel in channels:
        await channel.close()
    return soak.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--rate", type=float, required=True, help="creates per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--tag", required=True, help="the prompt of every task created")
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    summary = asyncio.run(main_async(args.target, args.rate, args.seconds, args.tag, args.users))
    print("SOAK_JSON " + json.dumps(summary), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
