"""Starts the RQ worker pool: N in-process (SimpleWorker) workers draining critical, default, low."""

from __future__ import annotations

from pymongo import MongoClient
from redis import Redis
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker
from rq.worker_pool import WorkerPool

from aitask_common.dependencies import wait_for_dependencies
from aitask_common.logging import configure_logging
from aitask_common.metrics import serve_metrics
from aitask_common.mongo import client_options
from aitask_common.queues import QUEUE_ORDER
from aitask_common.settings import load_settings
from aitask_common.tasks import COLLECTION
from dispatcher_service.reconciler import Reconciler
from dispatcher_service.settings import DispatcherSettings


def build_pool(settings: DispatcherSettings) -> WorkerPool:
    """A pool of `worker_concurrency` forked processes, each running jobs in-process.

    SimpleWorker (no fork per job) keeps each process's MongoDB client, Redis
    pool and gRPC channels alive across jobs; the pool restarts a dead worker.
    """
    return WorkerPool(
        [str(name) for name in QUEUE_ORDER],
        connection=Redis.from_url(settings.redis_url),
        num_workers=settings.worker_concurrency,
        worker_class=SimpleWorker,
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
