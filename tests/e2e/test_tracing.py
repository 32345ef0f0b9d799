"""One task, one trace: Envoy → task service → the queued job → dispatcher → provider → the SDK's HTTP call to the
vendor (the simulator), each process exporting over OTLP to a real gRPC trace collector on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devstack.processes import Ports
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it receives with the name of the service that sent it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {item.key: item.value.string_value for item in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [(attributes.get("service.name", ""), span) for span in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, Span]]:
        with self._lock:
            return [(service, span) for service, span in self.spans if span.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    received = Collector()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield received, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced_stack(collector: tuple[Collector, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of its own with tracing on: every process (Envoy too) sends its spans to the collector."""
    local = LocalStack(Ports.free(), tmp_path_factory.mktemp("traced-stack"), workers=2)
    local.env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector[1]}", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    try:
        local.start_all()
        yield local
    finally:
        local.stop_all()


def _attribute(span: Span, key: str) -> Any:
    for item in span.attributes:
        if item.key == key:
            return item.value.string_value or item.value.int_value
    return None


def test_one_trace_covers_every_service_a_task_goes_through(
    traced_stack: LocalStack, collector: tuple[Collector, int]
) -> None:
    received, _ = collector
    body = {"prompt": "a red fox in the snow", "user_id": "tracing-user", **SEEDREAM, "size": "1024x1024"}
    with traced_stack.rest() as rest:
        response = rest.post("/api/v1/ai/image/task", json=body)
        assert response.status_code == 200, response.text
        task_id = response.json()["data"]["task_id"]
        assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"

    # The dispatcher's run of the task's job names the task; its trace is the one to follow.
    def job_span() -> Span | None:
        with received._lock:
            spans = list(received.spans)
        return next(
            (span for service, span in spans if service == "dispatcher" and _attribute(span, "task_id") == task_id),
            None,
        )

    run = wait_until(job_span, timeout=20)
    wanted = {"envoy", "task_service", "dispatcher", "provider_volcengine"}

    def whole_trace() -> list[tuple[str, Span]] | None:
        spans = received.trace(run.trace_id)
        return spans if wanted <= {service for service, _ in spans} else None

    spans = wait_until(whole_trace, timeout=20)
    by_service: dict[str, list[Span]] = {}
    for service, span in spans:
        by_service.setdefault(service, []).append(span)
    # One root, Envoy's: every other span has its parent in the trace.
    ids = {span.span_id for _, span in spans}
    roots = [(service, span) for service, span in spans if span.parent_span_id not in ids]
    assert [service for service, _ in roots] == ["envoy"], [(service, span.name) for service, span in roots]
    # The task service served the create.
    assert any(
        span.kind == Span.SPAN_KIND_SERVER and span.name.endswith("/CreateImageTask")
        for span in by_service["task_service"]
    ), [span.name for span in by_service["task_service"]]
    # The dispatcher read the task from MongoDB and called the provider over gRPC, in the job's span.
    dispatcher_calls = {span.name for span in by_service["dispatcher"] if span.kind == Span.SPAN_KIND_CLIENT}
    assert "/aitask.provider.v1.ProviderService/Generate" in dispatcher_calls, dispatcher_calls
    # The provider called the vendor over HTTP (the Ark SDK's httpx), to the simulator's port.
    simulator = f":{traced_stack.ports.simulator}"
    upstream_calls = [
        span
        for span in by_service["provider_volcengine"]
        if span.kind == Span.SPAN_KIND_CLIENT
        and simulator in str(_attribute(span, "url.full") or _attribute(span, "http.url"))
    ]
    assert upstream_calls, [span.name for span in by_service["provider_volcengine"]]

    # The dispatcher's log lines written while it ran the task's job carry the trace id.
    lines = [json.loads(line) for line in traced_stack.log_text("dispatcher").splitlines() if task_id in line]
    traced = {line.get("trace_id") for line in lines if line.get("task_id") == task_id} - {None}
    assert traced == {run.trace_id.hex()}, lines


def test_without_an_endpoint_nothing_is_traced(stack: LocalStack) -> None:
    # The shared stack sets no OTEL_EXPORTER_OTLP_ENDPOINT: its log lines carry no trace id.
    assert stack.log_text("dispatcher") and '"trace_id"' not in stack.log_text("dispatcher")
