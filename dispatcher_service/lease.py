"""A short Redis lease that makes a task's owner explicit (FerretDB's conditional updates are not atomic)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from types import TracebackType

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from aitask_common.queues import LEASE_KEY_PREFIX as LEASE_KEY_PREFIX  # re-exported: the dispatcher's name for it

# Renew or release only while we still hold the lease (compare-and-set).
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class _Renewer:
    """One daemon thread per process renews every lease held in it, a third of its TTL after the last renewal.

    A thread per lease cost a thread start and join on every job, which showed
    in the dispatcher's profile.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[Redis, str, int, float]] = {}  # key: redis, token, ttl_ms, renew_at
        self._wake = threading.Condition()
        self._next_wake = float("inf")
        self._thread: threading.Thread | None = None

    def hold(self, key: str, redis: Redis, token: str, ttl_ms: int) -> None:
        renew_at = time.monotonic() + ttl_ms / 3000
        with self._wake:
            self._held[key] = (redis, token, ttl_ms, renew_at)
            if self._thread is None or not self._thread.is_alive():
                # Also after a fork: the parent's thread does not exist in the child.
                self._thread = threading.Thread(target=self._run, name="lease renewer", daemon=True)
                self._thread.start()
            elif renew_at < self._next_wake:
                self._wake.notify()

    def drop(self, key: str) -> None:
        with self._wake:
            self._held.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [(key, lease) for key, lease in self._held.items() if lease[3] <= now]
                if not due:
                    self._next_wake = min((lease[3] for lease in self._held.values()), default=now + 60)
                    self._wake.wait(self._next_wake - now)
                    continue
                for key, (redis, token, ttl_ms, _) in due:
                    self._held[key] = (redis, token, ttl_ms, now + ttl_ms / 3000)
            for key, (redis, token, ttl_ms, _) in due:
                try:
                    redis.eval(_RENEW, 1, key, token, ttl_ms)
                except Exception:  # noqa: BLE001 - a missed renewal is retried; expiry is the safety net
                    continue


_renewer = _Renewer()


class TaskLease:
    """`with TaskLease(...) as lease:` holds `aitask:lease:<task_id>`, renewed in the background.

    Given `also_read`, taking the lease also reads that key, in the same round trip (`lease.read`).
    """

    def __init__(self, redis: Redis, task_id: str, seconds: float, also_read: str | None = None) -> None:
        self.redis = redis
        self.key = LEASE_KEY_PREFIX + task_id
        self.token = uuid.uuid4().hex
        self.ttl_ms = int(seconds * 1000)
        self.acquired = False
        self.also_read = also_read
        self.read: bytes | None = None

    def __enter__(self) -> TaskLease:
        if self.also_read is None:
            self.acquired = bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        else:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self.key, self.token, nx=True, px=self.ttl_ms)
                pipe.get(self.also_read)
                acquired, self.read = pipe.execute()
            self.acquired = bool(acquired)
        if self.acquired:
            _renewer.hold(self.key, self.redis, self.token, self.ttl_ms)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.acquired:
            # Redis down: the lease expires on its own (the run's outcome is decided; RQ would quit on a raise).
            with contextlib.suppress(RedisError):
                self.release_in(self.redis)

    def release_in(self, connection: Redis | Pipeline) -> None:
        """Let go now; given a pipeline, with the caller's last writes in one round trip (if that
        pipeline never runs, the lease expires on its own)."""
        _renewer.drop(self.key)
        self.acquired = False
        connection.eval(_RELEASE, 1, self.key, self.token)
