"""MongoDB client options shared by every process (works against MongoDB and FerretDB alike)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from aitask_common.settings import ServiceSettings

# MongoDB's error code for a duplicate key (also inside a bulk write's errors).
DUPLICATE_KEY = 11000
# Statements one update command (a bulk write of updates or upserts) carries at most. FerretDB 1.24 holds a
# PostgreSQL connection for every statement of an update command until the command ends: one bulk write of 150
# statements held all of its pool's 50 connections, waited for one more, and FerretDB stopped answering every
# client (measured: 49 statements pass, 51 hang). An insert of many documents takes one connection.
UPDATE_STATEMENTS_MAX = 16

Operation = TypeVar("Operation")


def update_batches(operations: Sequence[Operation]) -> Iterator[Sequence[Operation]]:
    """`operations` in slices of at most UPDATE_STATEMENTS_MAX, one bulk write each."""
    for start in range(0, len(operations), UPDATE_STATEMENTS_MAX):
        yield operations[start : start + UPDATE_STATEMENTS_MAX]


def client_options(settings: ServiceSettings, app_name: str) -> dict[str, Any]:
    """Keyword arguments for `MongoClient` / `AsyncMongoClient`."""
    return {
        "host": settings.mongo_url,
        "tz_aware": True,
        "appname": app_name,
        # Fail a request quickly when the database is unreachable instead of hanging it.
        "serverSelectionTimeoutMS": 3000,
        "connectTimeoutMS": 3000,
    }
