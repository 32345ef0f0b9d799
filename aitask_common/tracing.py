"""OpenTelemetry traces, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

When set, each process exports its spans over OTLP/gRPC, and what a task's path goes through is instrumented: gRPC
servers and clients, Redis, MongoDB, httpx and requests (the vendors' SDKs call through them), and aiohttp's servers
(the OpenAI door, output downloads) and client (webhook deliveries). Envoy starts the trace (gateway/config.py); the
task service carries its context in the job it enqueues (`job_options`), so the dispatcher's run of the job, its
call to a provider and the provider's call upstream join the same trace, and so do the task's later jobs (retries,
polls) and its webhook messages' deliveries (the message keeps the context of the change that made it). Log lines
written inside a span carry its `trace_id`.

Off, nothing here is imported past this module and no library is patched: the hot paths stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aitask_common.settings import ServiceSettings

_enabled = False


def configure_tracing(service: str, settings: ServiceSettings) -> bool:
    """Export this process's spans under `service` and instrument its libraries, if an endpoint is set.

    Call before any gRPC server, channel or database client is made: the instrumentors patch their classes.
    """
    global _enabled
    if not settings.otel_exporter_otlp_endpoint or _enabled:
        return _enabled
    # Imported here: a process that does not trace loads none of it (memory at rest, start-up time).
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
        GrpcInstrumentorClient,
    )
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    endpoint = settings.otel_exporter_otlp_endpoint
    # Batches are sent by a thread, which the SDK restarts in forked children (the dispatcher's workers).
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    for instrumentor in (
        GrpcAioInstrumentorServer(),  # type: ignore[no-untyped-call]
        GrpcAioInstrumentorClient(),  # type: ignore[no-untyped-call]
        GrpcInstrumentorClient(),  # type: ignore[no-untyped-call]
        RedisInstrumentor(),
        PymongoInstrumentor(),
        HTTPXClientInstrumentor(),
        RequestsInstrumentor(),
        AioHttpClientInstrumentor(),
        AioHttpServerInstrumentor(),
    ):
        instrumentor.instrument()
    _enabled = True
    return True


def current_carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers, to carry in a job; None when tracing is off or no span is on."""
    if not _enabled:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


@contextmanager
def job_span(name: str, carrier: dict[str, str] | None, **attributes: Any) -> Iterator[None]:
    """A span around one job's run (an RQ job, a webhook delivery), a child of the context the job carries
    (`current_carrier` when it was made)."""
    if not _enabled:
        yield
        return
    from opentelemetry import propagate, trace

    context = propagate.extract(carrier or {})
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span(name, context=context, kind=trace.SpanKind.CONSUMER, attributes=attributes):
        yield


def current_trace_id() -> str | None:
    """The trace id of the span on now, as 32 hex digits; None when tracing is off or outside any span."""
    if not _enabled:
        return None
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
