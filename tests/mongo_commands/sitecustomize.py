"""Records the MongoDB commands of every Python process whose PYTHONPATH holds this directory.

Python imports `sitecustomize` at start-up, so a stack started with this directory on its PYTHONPATH and
MONGO_COMMAND_LOG naming a file has each of its services append, for every query or write it sends, one JSON
line: the database, collection and command, its callers (the frames in this repository, innermost first) and,
for each filter, its top-level fields with how each is matched ("eq", "in" or "other"). Production code is unchanged;
tests/e2e/test_shard_keys.py reads the file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pymongo import monitoring

ROOT = str(Path(__file__).resolve().parents[2])
VENV = os.path.join(ROOT, ".venv")
HERE = str(Path(__file__).resolve().parent)


def matched_by(condition: Any) -> str:
    """How a filter matches one field: an equality, an $in, or anything else."""
    if not isinstance(condition, dict):
        return "eq"
    if set(condition) == {"$eq"}:
        return "eq"
    if set(condition) == {"$in"}:
        return "in"
    return "other"


def filter_fields(query: Any) -> dict[str, str]:
    """A filter's top-level fields, each with how it is matched."""
    return {field: matched_by(condition) for field, condition in (query or {}).items()}


def command_filters(name: str, command: Any) -> list[Any] | None:
    """The filters a command selects documents by (inserts: their documents), or None for other commands."""
    if name == "find":
        return [command.get("filter", {})]
    if name in ("count", "distinct", "findAndModify"):
        return [command.get("query", {})]
    if name == "update":
        return [update["q"] for update in command.get("updates", [])]
    if name == "delete":
        return [delete["q"] for delete in command.get("deletes", [])]
    if name == "insert":
        return list(command.get("documents", []))
    if name == "aggregate":
        stages = command.get("pipeline", [])
        return [stages[0]["$match"] if stages and "$match" in stages[0] else {}]
    return None


def callers() -> list[str]:
    """Where in this repository the command comes from, innermost first: "path/to/module.py:Qualified.name"."""
    found = []
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(ROOT) and not filename.startswith((VENV, HERE)):
            found.append(f"{os.path.relpath(filename, ROOT)}:{frame.f_code.co_qualname}")
        frame = frame.f_back
    return found


class CommandRecorder(monitoring.CommandListener):
    """Appends one line per filter of each query or write to the log (O_APPEND: processes share the file)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        filters = command_filters(event.command_name, event.command)
        if filters is None:
            return
        where = callers()
        for query in filters:
            line = {
                "database": event.database_name,
                "collection": event.command.get(event.command_name),
                "command": event.command_name,
                "fields": filter_fields(query),
                "callers": where,
            }
            os.write(self.fd, (json.dumps(line, default=str) + "\n").encode())

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


if os.environ.get("MONGO_COMMAND_LOG"):
    monitoring.register(CommandRecorder(os.environ["MONGO_COMMAND_LOG"]))
