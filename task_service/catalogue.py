"""The provider catalogues as the task service sees them, refreshed from the registry."""

from __future__ import annotations

import asyncio
import time

from redis import Redis

from aitask_common.logging import get_logger
from aitask_common.registry import read_catalogues
from task_service.validation import Catalogues

log = get_logger(__name__)

# An unknown provider triggers a re-read at most this often, so a freshly
# started provider is usable at once without every bad request costing a read.
MIN_ON_DEMAND_REFRESH_SECONDS = 0.5


class CatalogueCache:
    """Holds the last catalogues read from Redis and re-reads them periodically."""

    def __init__(self, redis: Redis, refresh_seconds: float) -> None:
        self.redis = redis
        self.refresh_seconds = refresh_seconds
        self.catalogues: Catalogues = {}
        self._read_at = 0.0
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Re-read every catalogue (in a thread: the client is synchronous). A provider Redis no longer lists (it
        lost its data and the provider has not published again yet) keeps its last catalogue: its creates are
        accepted and wait for it, not refused as an unknown provider."""
        self.catalogues = self.catalogues | await asyncio.to_thread(read_catalogues, self.redis)
        self._read_at = time.monotonic()

    async def current(self, provider: str) -> Catalogues:
        """The catalogues, re-read first if `provider` is unknown and the copy is not brand new."""
        if provider not in self.catalogues and time.monotonic() - self._read_at > MIN_ON_DEMAND_REFRESH_SECONDS:
            await self.refresh()
        return self.catalogues

    def start(self) -> None:
        """Begin periodic refreshing."""
        self._task = asyncio.create_task(self._loop())

    def stop(self) -> None:
        """Stop periodic refreshing."""
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - keep serving the last known catalogues
                log.warning("catalogue refresh failed", error=str(error))
