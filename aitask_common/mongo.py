"""MongoDB client options shared by every process (works against MongoDB and FerretDB alike)."""

from __future__ import annotations

from typing import Any

from aitask_common.settings import ServiceSettings

# MongoDB's error code for a duplicate key (also inside a bulk write's errors).
DUPLICATE_KEY = 11000


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
