"""Prometheus metrics of every service: RPCs, tasks, upstream calls, retries, queues, providers.

Each process serves them on METRICS_PORT at /metrics. The dispatcher runs its
workers in forked processes, so it uses prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set before this module is imported).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis import Redis

from aitask_common.queues import QUEUE_ORDER, queue
from aitask_common.registry import read_instances

# Task durations span sub-second images to many-minute videos.
TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

GRPC_REQUESTS = Counter(
    "aitask_grpc_requests_total", "gRPC requests handled, by method and status code", ["method", "code"]
)
GRPC_LATENCY = Histogram("aitask_grpc_request_duration_seconds", "gRPC request handling time", ["method"])
TASKS_CREATED = Counter("aitask_tasks_created_total", "Tasks accepted", ["provider", "model", "type"])
TASKS_FINISHED = Counter(
    "aitask_tasks_finished_total", "Tasks that reached a final state", ["provider", "model", "type", "status"]
)
TASK_DURATION = Histogram(
    "aitask_task_duration_seconds", "Time from create to completed or failed", ["type"], buckets=TASK_BUCKETS
)
UPSTREAM_CALL = Histogram(
    "aitask_upstream_call_duration_seconds",
    "Provider call time as the dispatcher sees it (includes the upstream)",
    ["provider", "method", "code"],
    buckets=TASK_BUCKETS,
)
RETRIES = Counter(
    "aitask_task_retries_total", "Upstream attempts scheduled again after a retryable error", ["provider", "model"]
)
RESULT_CACHE_LOOKUPS = Counter(
    "aitask_result_cache_lookups_total",
    "Task service result cache lookups by outcome (hit, deleted, miss, error)",
    ["outcome"],
)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary RPC by method and final status code."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except Exception:
                status = context.code()
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                GRPC_REQUESTS.labels(method, code).inc()
                GRPC_LATENCY.labels(method).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class QueueAndRegistryCollector(Collector):
    """Queue depth per priority and live provider instances, read from Redis at scrape time."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("aitask_queue_depth", "Jobs per queue and state", labels=["queue", "state"])
        instances = GaugeMetricFamily("aitask_provider_instances", "Live provider instances", labels=["provider"])
        try:
            for name in QUEUE_ORDER:
                rq_queue = queue(self.redis, name)
                depth.add_metric([str(name), "queued"], rq_queue.count)
                depth.add_metric([str(name), "started"], rq_queue.started_job_registry.count)
                depth.add_metric([str(name), "scheduled"], rq_queue.scheduled_job_registry.count)
                depth.add_metric([str(name), "failed"], rq_queue.failed_job_registry.count)
            counts: dict[str, int] = {}
            for instance in read_instances(self.redis):
                counts[instance.provider] = counts.get(instance.provider, 0) + 1
            for provider, count in counts.items():
                instances.add_metric([provider], count)
        except Exception:  # noqa: BLE001, S110 - Redis down: scrape what we can, health reports the outage
            pass
        yield depth
        yield instances


def serve_metrics(host: str, port: int, redis: Redis | None = None) -> None:
    """Serve /metrics on host:port (port 0 disables); with `redis`, add queue and registry gauges."""
    if port == 0:
        return
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    if redis is not None:
        registry.register(QueueAndRegistryCollector(redis))
    start_http_server(port, addr=host, registry=registry)
