"""Starts the RQ worker pool: N in-process workers draining critical, default, low, each with a poller."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from pymongo import MongoClient
from redis import Redis
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import SimpleWorker
from rq.worker_pool import WorkerPool

from aitask_common.dependencies import wait_for_dependencies
from aitask_common.logging import configure_logging
from aitask_common.metrics import serve_metrics
from aitask_common.mongo import client_options
from aitask_common.queues import QUEUE_ORDER
from aitask_common.settings import load_settings
from aitask_common.tasks import COLLECTION
from dispatcher_service.jobs import process_task, runtime
from dispatcher_service.polls import Poller
from dispatcher_service.reconciler import Reconciler
from dispatcher_service.settings import DispatcherSettings

# RQ refreshes a worker's heartbeat about four times per job; its key lives for minutes.
HEARTBEAT_EVERY_SECONDS = 1.0
SUSPENSION_CHECK_EVERY_SECONDS = 1.0


class DispatcherWorker(SimpleWorker):
    """A SimpleWorker that also runs this process's poller, and skips RQ bookkeeping that repeats
    itself from job to job (heartbeats and suspension checks less than a second apart, an unchanged state)."""

    log_result_lifespan = False
    poller: Poller | None = None
    _next_suspension_check = 0.0

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        # Connections are opened here, in the worker process, not in the pool's parent before the fork.
        self.poller = Poller(runtime().redis, process_task)
        self.poller.start()

    def teardown(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        super().teardown()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        last: datetime | None = self.last_heartbeat
        if timeout is None and pipeline is None and last and (now() - last).total_seconds() < HEARTBEAT_EVERY_SECONDS:
            return
        super().heartbeat(timeout, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        # RQ asks Redis before every job (a heartbeat plus EXISTS rq:suspended); `rq suspend` still takes
        # effect within a second.
        if time.monotonic() < self._next_suspension_check:
            return
        self._next_suspension_check = time.monotonic() + SUSPENSION_CHECK_EVERY_SECONDS
        super().check_for_suspension(burst)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == getattr(self, "_state", None):
            return
        super().set_state(state, pipeline)


def build_pool(settings: DispatcherSettings) -> WorkerPool:
    """A pool of `worker_concurrency` forked processes, each running jobs in-process.

    SimpleWorker (no fork per job) keeps each process's MongoDB client, Redis
    pool and gRPC channels alive across jobs; the pool restarts a dead worker.
    """
    return WorkerPool(
        [str(name) for name in QUEUE_ORDER],
        connection=Redis.from_url(settings.redis_url),
        num_workers=settings.worker_concurrency,
        worker_class=DispatcherWorker,
        serializer=JSONSerializer,
    )


def main() -> None:
    """Entry point of `python -m dispatcher_service`."""
    settings = load_settings(DispatcherSettings)
    configure_logging("dispatcher", settings)
    wait_for_dependencies(settings)
    redis = Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout)
    serve_metrics(settings.metrics_host, settings.metrics_port, redis)
    mongo = MongoClient(**client_options(settings, "dispatcher-reconciler"))
    Reconciler(settings, redis, mongo[settings.mongo_database][COLLECTION]).start()
    build_pool(settings).start(logging_level=settings.log_level.upper())
