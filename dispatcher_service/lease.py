"""A short Redis lease that makes a task's owner explicit (FerretDB's conditional updates are not atomic)."""

from __future__ import annotations

import threading
import uuid
from types import TracebackType

from redis import Redis

LEASE_KEY_PREFIX = "aitask:lease:"

# Renew or release only while we still hold the lease (compare-and-set).
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class TaskLease:
    """`with TaskLease(...) as lease:` holds `aitask:lease:<task_id>` and renews it in the background."""

    def __init__(self, redis: Redis, task_id: str, seconds: float) -> None:
        self.redis = redis
        self.key = LEASE_KEY_PREFIX + task_id
        self.token = uuid.uuid4().hex
        self.ttl_ms = int(seconds * 1000)
        self.acquired = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> TaskLease:
        self.acquired = bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        if self.acquired:
            self._renewer = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
            self._renewer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self.acquired:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        self.redis.eval(_RELEASE, 1, self.key, self.token)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)
            except Exception:  # noqa: BLE001 - a missed renewal is retried; expiry is the safety net
                continue
