"""Floors: the storage work of a request issued straight from Python, with no gRPC, Envoy or service code.

Create floor: what `TaskService._create` does to storage (one `insert_one` of the
same document into FerretDB, then `dispatcher_service.schedule.enqueue_task`, RQ's own
enqueue with the JSON serializer) at the benchmark's concurrency. Read floor:
one `find_one({_id})`, what GetTaskResult does. Each is driven by PROCESSES
separate Python processes of CONCURRENCY / PROCESSES threads each, so the
driver's own GIL is not the bottleneck; every thread loops until the deadline
and records the latency of each operation that started after the warm-up.

Run by the harness as `python -m bench.harness.floor create|read ARGS...`; one
process prints `FLOOR_JSON {...}` with its counts and latency samples.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from typing import Any

from pymongo import MongoClient
from redis import ConnectionPool, Redis
from ulid import ULID

from aitask_common.queues import Priority
from aitask_common.tasks import COLLECTION, TaskStatus, TaskType, utcnow
from dispatcher_service.schedule import enqueue_task


def task_document(user_id: str, prompt: str) -> dict[str, Any]:
    """The document TaskService._create inserts for a Seedream image request."""
    now = utcnow()
    return {
        "_id": str(ULID()),
        "type": TaskType.IMAGE.value,
        "status": TaskStatus.PENDING.value,
        "user_id": user_id,
        "provider": "volcengine",
        "model": "doubao-seedream-3-0-t2i-250415",
        "prompt": prompt,
        "parameters": {"size": "1024x1024", "response_format": "url", "priority": "default"},
        "attempts": 0,
        "created": now,
        "updated": now,
    }


def drive(args: argparse.Namespace) -> dict[str, Any]:
    """Run `args.threads` threads of the chosen operation until the deadline; return counts and latencies."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(
        args.mongo_url, tz_aware=True, maxPoolSize=args.threads, appname="bench-floor"
    )
    tasks = mongo[args.database][COLLECTION]
    redis = Redis(connection_pool=ConnectionPool.from_url(args.redis_url, max_connections=args.threads))
    ids = [line.strip() for line in open(args.ids_file)] if args.ids_file else []  # noqa: SIM115
    mongo.admin.command("ping")
    redis.ping()
    # Every process of the driver starts at the same wall-clock moment.
    start = time.monotonic() + max(0.0, args.start_at - time.time())
    measure_from = start + args.warmup
    deadline = measure_from + args.duration
    latencies: list[list[float]] = [[] for _ in range(args.threads)]
    errors = [0] * args.threads

    def create() -> None:
        document = task_document(f"{args.user_prefix}{random.randint(1, args.users)}", args.prompt)
        tasks.insert_one(document)
        enqueue_task(redis, document["_id"], Priority.DEFAULT)

    def read() -> None:
        if tasks.find_one({"_id": random.choice(ids)}) is None:
            raise LookupError("task missing")

    operation = create if args.operation == "create" else read

    def loop(index: int) -> None:
        mine = latencies[index]
        time.sleep(max(0.0, start - time.monotonic()))
        while True:
            began = time.monotonic()
            if began >= deadline:
                return
            try:
                operation()
            except Exception:  # noqa: BLE001 - counted, the run goes on
                if began >= measure_from:
                    errors[index] += 1
                continue
            if began >= measure_from:
                mine.append((time.monotonic() - began) * 1000)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = [value for per_thread in latencies for value in per_thread]
    return {
        "operations": len(samples),
        "errors": sum(errors),
        "duration_s": args.duration,
        "latencies_ms": [round(value, 3) for value in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("operation", choices=["create", "read"])
    parser.add_argument("--mongo-url", required=True)
    parser.add_argument("--database", default="aitask")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--start-at", type=float, default=0.0, help="wall-clock time (epoch s) to begin at")
    parser.add_argument("--prompt", default="floor: a lighthouse at dawn, watercolour")
    parser.add_argument("--user-prefix", default="bench-u")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--ids-file", help="task ids to read, one a line (read)")
    result = drive(parser.parse_args())
    sys.stdout.write("FLOOR_JSON " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
