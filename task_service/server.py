"""Builds the task service (used by `python -m task_service` and by tests alike)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, MongoClient
from redis import Redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from aitask.v1 import task_service_pb2, task_service_pb2_grpc
from aitask_common.grpc_server import BALANCED_DRAIN_SECONDS, GrpcServer, run_until_signalled
from aitask_common.ledger import Ledger
from aitask_common.logging import configure_logging, get_logger
from aitask_common.metrics import serve_metrics
from aitask_common.mongo import client_options
from aitask_common.outputs import OutputLinks, open_output_store
from aitask_common.redis_async import reconnecting
from aitask_common.redis_clients import async_redis_client, events_redis, redis_client
from aitask_common.settings import load_settings
from aitask_common.tracing import configure_tracing
from aitask_common.webhooks import install_output_links
from task_service.admin import AUDIT_COLLECTION, AdminServicer
from task_service.api_keys import ApiKeyStore
from task_service.auth import AuthInterceptor, KeyVerifier
from task_service.batching import Batcher
from task_service.billing import Billing
from task_service.catalogue import CatalogueCache
from task_service.enqueue import TaskQueue
from task_service.limits import InflightTasks, RateLimiter
from task_service.output_http import OutputServer
from task_service.queue_position import QueuePositions
from task_service.result_cache import FinalResultCache
from task_service.servicer import TaskServicer
from task_service.settings import TaskServiceSettings
from task_service.storage import TaskStore
from task_service.watch import WatchHub, task_reader

SERVICE_NAME = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name
ADMIN_SERVICE_NAME = task_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
# Pooled connections of the request path's Redis client (per node on a cluster).
REQUEST_CONNECTIONS = 200

log = get_logger(__name__)

# Retries of an asyncio-client command whose connection broke (a retried INCR may count a request twice, the
# cache's commands are idempotent: harmless).


@dataclass
class TaskService:
    """The running pieces of one task-service process."""

    server: GrpcServer
    mongo: AsyncMongoClient[dict[str, Any]]
    redis: Redis
    async_redis: AsyncRedis
    catalogues: CatalogueCache
    batchers: list[Batcher[Any]]
    watch_hub: WatchHub
    output_server: OutputServer
    sync_mongo: MongoClient[dict[str, Any]]

    async def start(self, settings: TaskServiceSettings) -> None:
        """Start serving the output links, then gRPC (a port in use fails the start before any call is taken)."""
        await self.output_server.start(settings.host, settings.output_http_port)
        await self.server.start()

    async def close(self) -> None:
        """Release connections after the server stopped."""
        await self.output_server.stop()
        await self.watch_hub.stop()
        self.catalogues.stop()
        for batcher in self.batchers:
            await batcher.stop()
        await self.mongo.close()
        self.sync_mongo.close()
        self.redis.close()
        await self.async_redis.aclose()


def _request_redis(settings: TaskServiceSettings) -> AsyncRedis:
    if settings.redis_cluster_urls:
        return async_redis_client(settings, max_connections=REQUEST_CONNECTIONS)  # per node
    return AsyncRedis(
        # Under a burst, wait for a pooled connection instead of failing with "Too many connections".
        connection_pool=BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REQUEST_CONNECTIONS,
            timeout=settings.redis_socket_timeout,
            socket_timeout=settings.redis_socket_timeout,
            retry=reconnecting(),
        )
    )


async def build_server(settings: TaskServiceSettings) -> TaskService:
    """Wire storage, queue and catalogue into a gRPC server bound to settings.host:port."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(**client_options(settings, "task_service"))
    store = TaskStore(mongo, settings.mongo_database)
    redis = redis_client(settings)
    catalogues = CatalogueCache(redis, settings.catalogue_refresh_seconds)
    catalogues.start()

    async def start_up() -> None:
        # Retried by the server (not ready meanwhile) until MongoDB answers; an unreachable Redis only delays the
        # catalogues, which the periodic and on-demand refreshes read later.
        await store.ensure_indexes()
        if migrated := await store.add_created_buckets():
            log.info("tasks given their created_buckets", tasks=migrated)
        if migrated := await store.mark_in_flight():
            log.info("tasks in flight marked in_flight", tasks=migrated)
        await asyncio.to_thread(ledger.ensure_indexes)
        try:
            await catalogues.refresh()
        except RedisError as error:
            log.warning("catalogues not read yet: Redis unreachable", error=str(error))

    async def dependencies_reachable() -> None:
        # MongoDB alone: with Redis down, reads are still served from MongoDB (creates get 503), so the pod stays
        # in rotation.
        await mongo.admin.command("ping")

    # The limits and the result cache run on every request: an asyncio client, not a thread hop per call like
    # the RQ client; retried on broken connections (aitask_common/redis_async.py).
    async_redis = _request_redis(settings)
    # Authentication and the per-key rate limit guard every TaskService and AdminService method; health and
    # reflection stay open.
    auth = AuthInterceptor(
        _key_verifier(settings, mongo),
        RateLimiter(async_redis, settings.rate_limit_requests, settings.rate_limit_window_seconds),
    )
    # Envoy balances over task services: on SIGTERM it must see NOT_SERVING before this one stops listening.
    server = GrpcServer(
        f"{settings.host}:{settings.port}",
        [SERVICE_NAME, ADMIN_SERVICE_NAME],
        dependencies_reachable,
        interceptors=[auth],
        drain_seconds=BALANCED_DRAIN_SECONDS,
        start_up=start_up,
    )
    inflight = InflightTasks(async_redis, settings.max_inflight_tasks_per_user)
    results = FinalResultCache(async_redis, settings.result_cache_seconds, settings.result_cache_max_bytes)
    task_queue = TaskQueue(redis, settings.fair_share_depth)
    batchers: list[Batcher[Any]] = [inflight.reserves, store.inserts, task_queue.batcher]
    for batcher in batchers:
        batcher.start()
    positions = QueuePositions(async_redis)
    # Its own client: the hub holds one pub/sub connection and reconnects it itself (no retries underneath).
    watch_redis = events_redis(settings, socket_keepalive=True, retry=Retry(NoBackoff(), 0))
    links = OutputLinks(settings)
    install_output_links(links)  # webhook message bodies
    # The stores are synchronous (GridFS, boto3): called in worker threads, with their own MongoDB client.
    sync_mongo: MongoClient[dict[str, Any]] = MongoClient(**client_options(settings, "task_service"))
    outputs = open_output_store(settings, sync_mongo)
    ledger = Ledger(sync_mongo[settings.mongo_database], settings.ledger_starting_credits)
    billing = Billing(async_redis, ledger, store.collection)
    watch_hub = WatchHub(watch_redis, task_reader(store, positions, links))
    watch_hub.start()
    servicer = TaskServicer(
        settings, store, task_queue, catalogues, inflight, results, positions, watch_hub, links, outputs, billing
    )
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicer, server.server)
    audit = mongo[settings.mongo_database][AUDIT_COLLECTION]
    admin = AdminServicer(redis, audit, servicer, ApiKeyStore(mongo, settings.mongo_database))
    task_service_pb2_grpc.add_AdminServiceServicer_to_server(admin, server.server)
    output_server = OutputServer(store, outputs, links)
    return TaskService(server, mongo, redis, async_redis, catalogues, batchers, watch_hub, output_server, sync_mongo)


def _key_verifier(settings: TaskServiceSettings, mongo: AsyncMongoClient[dict[str, Any]]) -> KeyVerifier | None:
    """API-key checking, or None (with a warning) when authentication is off."""
    if not settings.auth_required:
        log.warning(
            "authentication is OFF (ENVIRONMENT=development): every caller acts as an admin; do not expose this"
        )
        return None
    return KeyVerifier(ApiKeyStore(mongo, settings.mongo_database), settings.api_key_cache_seconds)


async def serve(settings: TaskServiceSettings) -> None:
    """Run until SIGTERM."""
    service = await build_server(settings)
    serve_metrics(settings.metrics_host, settings.metrics_port)
    try:
        await run_until_signalled(service.server, settings.shutdown_grace, lambda: service.start(settings))
    finally:
        await service.close()


def main() -> None:
    """Entry point of `python -m task_service`."""
    settings = load_settings(TaskServiceSettings)
    configure_logging("task_service", settings)
    configure_tracing("task_service", settings)
    # No start-up wait: the server is live at once and ready when MongoDB answers (GrpcServer's start_up).
    asyncio.run(serve(settings))
