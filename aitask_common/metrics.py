"""Prometheus metrics of every service: RPCs, tasks, upstream calls, retries (the dispatcher adds queues and
providers, dispatcher_service/metrics.py).

Each process serves them on METRICS_PORT at /metrics. The dispatcher runs its
workers in forked processes, so it uses prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set before this module is imported).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Task durations span sub-second images to many-minute videos.
TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

GRPC_REQUESTS = Counter(
    "aitask_grpc_requests_total", "gRPC requests handled, by method and status code", ["method", "code"]
)
GRPC_LATENCY = Histogram("aitask_grpc_request_duration_seconds", "gRPC request handling time", ["method"])
TASKS_CREATED = Counter("aitask_tasks_created_total", "Tasks accepted", ["provider", "model", "type"])
CREDITS = Counter(
    "aitask_credits_total", "Credits reserved at create, settled (charged) and refunded, by model", ["kind", "model"]
)
LEDGER_PROBLEMS = Counter(
    "aitask_ledger_problems_total",
    "Problems the periodic ledger check found: a ledger that does not add up, credit held too long (each is logged)",
)
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


_in_flight = 0


def in_flight_calls() -> int:
    """Unary RPCs this process is serving now (a provider instance reports it in its registry heartbeat)."""
    return _in_flight


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary RPC by method and final status code, and counts those in flight."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            global _in_flight
            started = time.perf_counter()
            code = "OK"
            _in_flight += 1
            try:
                return await inner(request, context)
            except Exception:
                status = context.code()
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                _in_flight -= 1
                GRPC_REQUESTS.labels(method, code).inc()
                GRPC_LATENCY.labels(method).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def serve_metrics(host: str, port: int, collectors: Iterable[Collector] = ()) -> None:
    """Serve /metrics on host:port (port 0 disables), with this process's `collectors` beside the metrics above."""
    if port == 0:
        return
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    for collector in collectors:
        registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
