"""Retention of stored outputs and tasks, and the storage check that keeps the store and the tasks in step.

- The sweep (a thread of every dispatcher; one replica works per interval, under a Redis lock): final tasks
  created more than TASK_RETENTION_DAYS ago are deleted with their outputs; outputs stored more than
  OUTPUT_RETENTION_DAYS ago are deleted and their task keeps only `upstream_url`. FerretDB has no TTL index,
  so it works in batches of `SWEEP_BATCH` (a query with a limit, then one delete per task by `_id`) and a pass
  stops after `SWEEP_MAX_BATCHES`: a large backlog drains over several passes without loading the store.
  The object goes first, the document second: a crash between them leaves a task the next pass still finds.
- The check (`python -m dispatcher_service.retention check [--repair] [--json]`, `make storage-check`): stored
  outputs without a task (or whose final task never recorded them: a copy a killed run left before its task
  failed), and tasks whose recorded output is missing from the store. `--repair` removes the first and
  forgets the second.

Settings come from the environment as for every service; what it leaves unset from `.local/stack.env`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, Final

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure
from redis import Redis

from aitask_common.logging import get_logger
from aitask_common.mongo import client_options
from aitask_common.output_settings import OutputSettings
from aitask_common.outputs import OutputStore, open_output_store
from aitask_common.redis_clients import redis_client
from aitask_common.settings import load_settings
from aitask_common.tasks import COLLECTION, TaskStatus, task_filter, utcnow

log = get_logger(__name__)

SWEEP_BATCH: Final = 200
SWEEP_MAX_BATCHES: Final = 50
SWEEP_INTERVAL_SECONDS: Final = 600.0
LOCK_KEY: Final = "aitask:retention-lock"
FINAL_STATUSES: Final = [status.value for status in TaskStatus if status.is_final]
# How many task ids one `$in` lookup of the check carries.
CHECK_BATCH: Final = 500


@dataclass
class SweepResult:
    """What one pass removed."""

    tasks_deleted: int = 0
    outputs_deleted: int = 0


class RetentionSweeper:
    """Deletes tasks and outputs past their retention, a batch at a time."""

    def __init__(self, settings: OutputSettings, redis: Redis, tasks: Collection[Any], outputs: OutputStore) -> None:
        self.settings = settings
        self.redis = redis
        self.tasks = tasks
        self.outputs = outputs
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()

    @property
    def enabled(self) -> bool:
        """Whether anything is ever swept (0 days keeps forever)."""
        return bool(self.settings.task_retention_days or self.settings.output_retention_days)

    def sweep(self, now: datetime | None = None) -> SweepResult:
        """One pass: expired tasks (with their outputs), then expired outputs."""
        now = now or utcnow()
        result = SweepResult()
        if self.settings.task_retention_days:
            cutoff = now - timedelta(days=self.settings.task_retention_days)
            query = {"created": {"$lt": cutoff}, "status": {"$in": FINAL_STATUSES}}
            for batch in self._batches(query):
                for document in batch:
                    if "output" in document or document.get("type") != "text":
                        self.outputs.delete(document["_id"])
                    owned = task_filter(document["_id"], document["user_id"])
                    result.tasks_deleted += self.tasks.delete_one(owned).deleted_count
        if self.settings.output_retention_days:
            cutoff = now - timedelta(days=self.settings.output_retention_days)
            for batch in self._batches({"output.stored": {"$lt": cutoff}}):
                for document in batch:
                    self.outputs.delete(document["_id"])
                    owned = task_filter(document["_id"], document["user_id"])
                    self.tasks.update_one(owned, {"$unset": {"output": ""}})
                    result.outputs_deleted += 1
        return result

    def _batches(self, query: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        for _ in range(SWEEP_MAX_BATCHES):
            # With the user: each delete or update then reaches one shard of a sharded MongoDB.
            fields = {"_id": 1, "user_id": 1, "type": 1, "output": 1}
            batch = list(self.tasks.find(query, fields).limit(SWEEP_BATCH))
            if not batch:
                return
            yield batch
            if len(batch) < SWEEP_BATCH:
                return

    def start(self) -> None:
        """Sweep every SWEEP_INTERVAL_SECONDS (the first soon after start) until `stop()`; off when nothing expires."""
        if self.enabled:
            threading.Thread(target=self._loop, name="retention", daemon=True).start()

    def stop(self) -> None:
        """End the loop after the current pass."""
        self._stop.set()

    def _loop(self) -> None:
        delay = 5.0
        while not self._stop.wait(delay):
            delay = SWEEP_INTERVAL_SECONDS
            lock_ms = int(SWEEP_INTERVAL_SECONDS * 1000) - 1000
            try:
                if self.redis.set(LOCK_KEY, self.token, nx=True, px=lock_ms):
                    result = self.sweep()
                    if result.tasks_deleted or result.outputs_deleted:
                        log.info("retention sweep", **asdict(result))
            except Exception as error:  # noqa: BLE001 - an unreachable store must not end the loop
                log.warning("retention sweep failed; retrying next interval", error=str(error))


@dataclass
class StorageReport:
    """Outputs stored without a task (or never recorded by their final task), tasks whose output is missing."""

    orphan_outputs: list[str] = field(default_factory=list)
    missing_outputs: list[str] = field(default_factory=list)


def check_storage(tasks: Collection[Any], outputs: OutputStore) -> StorageReport:
    """Compare the store with the tasks that record an output."""
    report = StorageReport()
    stored = set(outputs.task_ids())
    remaining = iter(sorted(stored))
    while batch := list(islice(remaining, CHECK_BATCH)):
        found = {
            document["_id"]: document
            for document in tasks.find({"_id": {"$in": batch}}, {"_id": 1, "status": 1, "output": 1})
        }
        for task_id in batch:
            document = found.get(task_id)
            # A task still running may be mid-copy: its object is not an orphan yet.
            if document is None or (document["status"] in FINAL_STATUSES and "output" not in document):
                report.orphan_outputs.append(task_id)
    for document in tasks.find({"output": {"$exists": True}}, {"_id": 1}):
        if document["_id"] not in stored:
            report.missing_outputs.append(document["_id"])
    return report


def repair(tasks: Collection[Any], outputs: OutputStore, report: StorageReport) -> None:
    """Remove the orphan outputs and forget the missing ones."""
    for task_id in report.orphan_outputs:
        outputs.delete(task_id)
    for task_id in report.missing_outputs:
        tasks.update_one({"_id": task_id}, {"$unset": {"output": ""}})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dispatcher_service.retention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m dispatcher_service.retention check --json",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{check,sweep}")
    check = commands.add_parser("check", help="list orphan and missing outputs (exit 3 when any)")
    check.add_argument("--repair", action="store_true", help="remove orphan outputs, forget missing ones")
    check.add_argument("--json", action="store_true", help="one JSON object on stdout")
    commands.add_parser("sweep", help="run one retention pass now")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 clean (or repaired), 3 when the check found something, 1 when a store is unreachable."""
    args = _parser().parse_args(argv)
    settings = load_settings(OutputSettings, local_stack=True)
    try:
        mongo: MongoClient[dict[str, Any]] = MongoClient(**client_options(settings, "storage-tools"))
        tasks = mongo[settings.mongo_database][COLLECTION]
        outputs = open_output_store(settings, mongo)
        if args.command == "sweep":
            redis = redis_client(settings)
            started = time.perf_counter()
            result = RetentionSweeper(settings, redis, tasks, outputs).sweep()
            print(json.dumps(asdict(result) | {"seconds": round(time.perf_counter() - started, 3)}))
            return 0
        report = check_storage(tasks, outputs)
        if args.repair:
            repair(tasks, outputs, report)
        if args.json:
            print(json.dumps(asdict(report) | {"repaired": args.repair}))
        else:
            print(f"outputs without a task: {len(report.orphan_outputs)} {' '.join(report.orphan_outputs)}".rstrip())
            print(
                f"tasks whose output is missing: {len(report.missing_outputs)} "
                f"{' '.join(report.missing_outputs)}".rstrip()
            )
            if args.repair:
                print("repaired")
        return 0 if args.repair or not (report.orphan_outputs or report.missing_outputs) else 3
    except ConnectionFailure as error:
        print(f"MongoDB at MONGO_URL is unavailable: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
