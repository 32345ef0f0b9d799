"""The RQ scheduler each dispatcher worker starts: it moves delayed jobs (retries after their backoff) to their
queues when due. `python -m dispatcher_service.scheduler` is its process, reading the scheduler from stdin.

Two changes from RQ's:
- It waits out a Redis outage instead of dying of it. RQ's dies on its first failed command, and its worker
  starts it again only once it notices: an idle worker sits in BLPOP for up to half a minute, and redis-py's own
  retries (jittered, up to 8 s apart) can keep a doomed scheduler alive past the worker's check. Here a failed
  round waits for Redis, asking every RECONNECT_SECONDS on a connection without redis-py's retries; the next
  round runs as soon as it answers. Its heartbeat takes back locks that expired meanwhile and gives up those
  another scheduler took.
- Its process is a new interpreter, not a fork of the worker. A worker forked while another of its threads is
  inside gRPC (the poller's calls, a channel connecting at start-up) gets a child that may crash at once
  (SIGSEGV), gRPC's fork handlers skipped. multiprocessing's spawn would also start a resource tracker that
  outlives the worker.
"""

from __future__ import annotations

import contextlib
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any, cast

from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq.scheduler import RQScheduler, run

from aitask_common.logging import configure_logging, get_logger
from aitask_common.redis_clients import REDIS_DOWN, wait_for_redis
from dispatcher_service.settings import DispatcherSettings

log = get_logger(__name__)

# How often the scheduler asks for Redis during an outage: due jobs move within about this of its return.
RECONNECT_SECONDS = 0.5


class SchedulerProcess:
    """The scheduler's process, with the part of multiprocessing.Process that RQ and the worker use."""

    def __init__(self, scheduler: OutageTolerantScheduler) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE)
        stdin = cast(IO[bytes], self.popen.stdin)
        with contextlib.suppress(BrokenPipeError):  # it died at once: is_alive says so
            stdin.write(pickle.dumps(scheduler))
        stdin.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    def kill(self) -> None:
        self.popen.kill()


class OutageTolerantScheduler(RQScheduler):
    """RQ's scheduler, riding out Redis outages in a process of its own (see the module's docstring)."""

    def __init__(self, *args: Any, settings: DispatcherSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    def start(self) -> SchedulerProcess:
        self._status = self.Status.STARTED
        process = SchedulerProcess(self)
        self._process = process  # type: ignore[assignment]  # RQ types it None
        return process

    def __getstate__(self) -> dict[str, Any]:
        # What the scheduler's process gets: neither the worker's connection nor its handle on the process.
        return {**vars(self), "_connection": None, "_process": None}

    @property
    def connection(self) -> Redis:
        if self._connection is None:
            pool_kwargs = {**self._pool_kwargs, "retry": Retry(NoBackoff(), 0)}  # the loop below is the retry
            pool = ConnectionPool(connection_class=self._pool_class, **pool_kwargs)
            self._connection = self._connection_class(connection_pool=pool)  # type: ignore[assignment]  # typed None
        return cast(Redis, self._connection)

    def work(self) -> None:
        self._install_signal_handlers()
        self._until_done(self.register_birth)
        while not self._stop_requested:
            if self._until_done(self._round):
                time.sleep(self.interval)
        with contextlib.suppress(*REDIS_DOWN):
            self.stop()

    def _round(self) -> None:
        if self.should_reacquire_locks:
            self.acquire_locks()
        self.heartbeat()
        self.enqueue_scheduled_jobs()

    def _until_done(self, step: Callable[[], None]) -> bool:
        """Run `step` until it gets through or a stop is requested, waiting for Redis between tries; whether it
        got through."""
        while not self._stop_requested:
            try:
                step()
                return True
            except REDIS_DOWN as error:
                self._wait_for_redis(error)
        return False

    def _wait_for_redis(self, error: Exception) -> None:
        log.warning("Redis unreachable; the RQ scheduler waits for it", scheduler=self.name, error=str(error))
        waited = wait_for_redis(self.connection, lambda: self._stop_requested, RECONNECT_SECONDS, RECONNECT_SECONDS)
        if waited is not None:
            log.info("Redis reachable again", scheduler=self.name, waited_seconds=round(waited, 1))


def main() -> None:
    """The scheduler's process: the scheduler its worker wrote to stdin, logging as the dispatcher does."""
    scheduler: OutageTolerantScheduler = pickle.load(sys.stdin.buffer)
    configure_logging("dispatcher", scheduler.settings)
    run(scheduler)


if __name__ == "__main__":
    main()
