"""One task, one trace: Envoy → task service → the queued job → dispatcher → provider → the SDK's HTTP call to the
vendor (the simulator), then the task's webhook deliveries to a real receiver, each process exporting over OTLP to a
real gRPC trace collector on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devstack.processes import Ports
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM
from tests.e2e.test_webhooks import Receiver, create, receiver  # noqa: F401 - a fixture


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

    def of(self, service: str, wanted: Callable[[Span], bool]) -> list[Span]:
        """The spans `service` sent that are `wanted`."""
        with self._lock:
            return [span for name, span in self.spans if name == service and wanted(span)]

    def first(self, service: str, wanted: Callable[[Span], bool]) -> Span | None:
        return next(iter(self.of(service, wanted)), None)

    def whole_trace(self, trace_id: bytes, services: set[str]) -> list[tuple[str, Span]]:
        """The trace once each of `services` sent spans to it and then none came for a second: a process exports
        the spans that ended every 200 ms, so a span's parent may come in a later batch than the span."""
        wait_until(lambda: services <= {service for service, _ in self.trace(trace_id)}, timeout=20)
        counts = [-1]

        def settled() -> bool:
            counts.append(len(self.trace(trace_id)))
            return counts[-1] == counts[-2]

        wait_until(settled, timeout=20, interval=1.0)
        return self.trace(trace_id)


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
    run = wait_until(
        lambda: received.first("dispatcher", lambda span: _attribute(span, "task_id") == task_id), timeout=20
    )
    spans = received.whole_trace(run.trace_id, {"envoy", "task_service", "dispatcher", "provider_volcengine"})
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


def test_a_tasks_webhook_deliveries_join_its_trace(
    traced_stack: LocalStack,
    collector: tuple[Collector, int],
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    received, _ = collector
    with traced_stack.rest() as rest:
        task_id = create(rest, "tracing-hooks", "text", receiver.url, webhook_events=["started", "final"])
        wait_until(lambda: len(receiver.of(task_id)) == 2, timeout=30)

    def delivery_spans() -> list[Span] | None:
        deliveries = received.of(
            "dispatcher", lambda span: span.name == "webhook delivery" and _attribute(span, "task_id") == task_id
        )
        return deliveries if len(deliveries) == 2 else None

    deliveries = wait_until(delivery_spans, timeout=20)

    run = wait_until(
        lambda: received.first(
            "dispatcher", lambda span: span.name == "process_task" and _attribute(span, "task_id") == task_id
        ),
        timeout=20,
    )
    # The started message was made inside the task's run, the final copy by it too: both join the task's trace.
    assert {span.trace_id for span in deliveries} == {run.trace_id}
    assert sorted(_attribute(span, "message_id") for span in deliveries) == sorted(
        request.headers["webhook-id"] for request in receiver.of(task_id)
    )

    def posts() -> list[Span] | None:
        spans = [span for _, span in received.trace(run.trace_id) if span.kind == Span.SPAN_KIND_CLIENT]
        found = [span for span in spans if span.parent_span_id in {delivery.span_id for delivery in deliveries}]
        return found if len(found) == 2 else None

    # Each attempt's HTTP POST (aiohttp's span) is a child of its delivery span, to the receiver's port.
    for post in wait_until(posts, timeout=20):
        assert f":{receiver.port}/" in str(_attribute(post, "url.full") or _attribute(post, "http.url"))
    # The receiver is told the trace too (W3C traceparent), as the vendors are.
    assert {request.headers["traceparent"].split("-")[1] for request in receiver.of(task_id)} == {run.trace_id.hex()}


def test_a_request_to_the_openai_door_is_one_trace(traced_stack: LocalStack, collector: tuple[Collector, int]) -> None:
    received, _ = collector
    key = traced_stack.create_api_key("tracing-door", name="tracing")
    with httpx.Client(base_url=f"http://127.0.0.1:{traced_stack.ports.envoy}", trust_env=False, timeout=60) as http:
        response = http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "gpt-4", "messages": [{"role": "user", "content": "a haiku about tracing"}]},
        )
    assert response.status_code == 200, response.text

    def chat_request(span: Span) -> bool:
        path = _attribute(span, "http.target") or _attribute(span, "url.path")
        return span.kind == Span.SPAN_KIND_SERVER and "/v1/chat/completions" in str(path)

    door = wait_until(lambda: received.first("openai_door", chat_request), timeout=20)

    spans = received.whole_trace(door.trace_id, {"envoy", "openai_door", "task_service", "dispatcher"})
    # Envoy's span is the one root: the door took the trace from its request, and passed it on to the task service.
    ids = {span.span_id for _, span in spans}
    assert [service for service, span in spans if span.parent_span_id not in ids] == ["envoy"]
    assert any(service == "task_service" and span.name.endswith("/CreateTextTask") for service, span in spans), sorted(
        {span.name for _, span in spans}
    )


def test_traced_servers_still_stream(traced_stack: LocalStack) -> None:
    # The door's SSE and the task service's ranged output reads pass aiohttp's traced middleware whole.
    key = traced_stack.create_api_key("tracing-stream", name="tracing")
    with httpx.Client(base_url=f"http://127.0.0.1:{traced_stack.ports.envoy}", trust_env=False, timeout=60) as http:
        chat = {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "stream a haiku"}]}
        with http.stream("POST", "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=chat) as sse:
            assert sse.status_code == 200 and sse.headers["content-type"].startswith("text/event-stream")
            events = [line for line in sse.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 3, events
        assert json.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk"
        with traced_stack.rest() as rest:
            body = {"prompt": "a traced fox", "user_id": "tracing-stream", **SEEDREAM, "size": "1024x1024"}
            task_id = rest.post("/api/v1/ai/image/task", json=body).json()["data"]["task_id"]
            task = wait_for_status(rest, task_id, {"completed", "failed"})
        assert task["status"] == "completed", task
        whole = http.get(task["image_url"])  # the signed link to our copy
        assert whole.status_code == 200 and len(whole.content) > 16
        part = http.get(task["image_url"], headers={"range": "bytes=2-9"})
        assert part.status_code == 206 and part.content == whole.content[2:10]


def test_without_an_endpoint_nothing_is_traced(stack: LocalStack) -> None:
    # The shared stack sets no OTEL_EXPORTER_OTLP_ENDPOINT: its log lines carry no trace id.
    assert stack.log_text("dispatcher") and '"trace_id"' not in stack.log_text("dispatcher")
