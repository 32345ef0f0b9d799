"""Values read from Redis and reused for a few seconds: one TTL cache for the registry and the duration estimates."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReadThroughCache(Generic[K, V]):
    """`get(key)` is what `read(key)` returned less than `seconds` ago, else a new read.

    A worker process's job thread and its poller thread share one; cachetools' TTLCache is not
    thread-safe, so a lock guards it (never the read itself).
    """

    def __init__(self, read: Callable[[K], V], seconds: float, maxsize: int = 1024) -> None:
        self._read = read
        self._cache: TTLCache[K, V] = TTLCache(maxsize, seconds)
        self._lock = threading.Lock()

    def get(self, key: K, fresh: bool = False) -> V:
        """The cached value, or (expired, never read, or `fresh`) a new read."""
        if not fresh:
            with self._lock, contextlib.suppress(KeyError):
                return self._cache[key]
        value = self._read(key)
        self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        """Cache a value this process knows to be current (it just wrote it)."""
        with self._lock:
            self._cache[key] = value

    def clear(self) -> None:
        """Read everything again on next use."""
        with self._lock:
            self._cache.clear()
