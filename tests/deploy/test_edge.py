"""The edge the image ships (gateway/edge.py), on a real Envoy rendered with the Dockerfile's arguments (local
ports, a CORS origin added, a small per-IP limit) and no task service behind it: what Envoy answers itself."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitask.v1 import task_service_pb2, task_service_pb2_grpc
from devstack.processes import free_port
from tests.conftest import wait_until
from tests.deploy.helpers import render_image_envoy, start_image_envoy

ALLOWED_ORIGIN = "https://app.example.com"
ANONYMOUS_PER_SECOND = 3
SECRET = "Bearer do-not-log-me"


@dataclass
class Edge:
    """A running Envoy: its public, admin and probe ports, and its output."""

    public: int
    admin: int
    probes: int
    log: Path

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.public}{path}"

    def access_log(self) -> list[dict[str, str]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def _get(url: str, **options: object) -> httpx.Response:
    return httpx.get(url, timeout=5, trust_env=False, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    scratch = tmp_path_factory.mktemp("edge")
    running = Edge(free_port(), free_port(), free_port(), scratch / "envoy.log")
    overrides = {
        "--listen-host": "127.0.0.1",
        "--listen-port": str(running.public),
        "--admin-port": str(running.admin),
        "--probe-host": "127.0.0.1",
        "--probe-port": str(running.probes),
        # Nothing listens there: the task service is "down", Envoy answers everything itself.
        "--task-service-host": "localhost",
        "--task-service-port": str(free_port()),
        "--anonymous-rate-limit-per-ip": str(ANONYMOUS_PER_SECOND),
        "--xff-trusted-hops": "0",
    }
    render_image_envoy(scratch / "envoy.json", overrides, ["--cors-origin", ALLOWED_ORIGIN])
    popen = start_image_envoy(scratch / "envoy.json", running.log)
    try:
        wait_until(lambda: popen.poll() is not None or _ready(running), timeout=60)
        assert popen.poll() is None, running.log.read_text()[-3000:]
        yield running
    finally:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


def _ready(edge: Edge) -> bool:
    try:
        return _get(edge.url("/ready", edge.probes)).status_code == 200
    except httpx.TransportError:
        return False


def test_admin_is_on_loopback_only_and_not_on_the_public_listener(edge: Edge) -> None:
    config = json.loads((edge.log.parent / "envoy.json").read_text())
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # The public listener routes everything to the task service: no admin endpoint answers there.
    response = httpx.post(edge.url("/quitquitquit"), timeout=5, trust_env=False)
    assert response.status_code != 200 and "OK" not in response.text
    assert _get(edge.url("/stats/prometheus")).status_code == 404
    assert _ready(edge), "Envoy still runs"


def test_the_probe_listener_serves_ready_and_metrics_only(edge: Edge) -> None:
    assert _get(edge.url("/ready", edge.probes)).text.strip() == "LIVE"
    metrics = _get(edge.url("/stats/prometheus", edge.probes))
    assert metrics.status_code == 200 and "envoy_http_downstream_rq_total" in metrics.text
    for path in ("/quitquitquit", "/server_info", "/config_dump", "/healthcheck/fail", "/clusters"):
        assert _get(edge.url(path, edge.probes)).status_code == 404, path
        assert httpx.post(edge.url(path, edge.probes), timeout=5, trust_env=False).status_code == 404, path
    assert _ready(edge)


def test_access_log_is_json_with_the_request_and_never_the_credentials(edge: Edge) -> None:
    request_id = f"edge-test-{time.monotonic_ns()}"
    headers = {"authorization": SECRET, "x-request-id": request_id, "user-agent": "edge-test/1"}
    response = _get(edge.url("/api/v1/ai/tasks?user_id=u1"), headers=headers)
    assert response.headers["x-request-id"] == request_id, "the caller's request id is kept and returned"
    line = wait_until(lambda: next((e for e in edge.access_log() if e.get("request_id") == request_id), None))
    assert line["method"] == "GET" and line["path"] == "/api/v1/ai/tasks?user_id=u1"
    assert line["status"] == response.status_code and line["user_agent"] == "edge-test/1"
    for field in ("duration_ms", "upstream_ms", "bytes_received", "bytes_sent", "client", "time"):
        assert field in line, field
    assert "do-not-log-me" not in edge.log.read_text()
    # Without an id, Envoy makes one and returns it.
    assert _get(edge.url("/api/v1/ai/tasks?user_id=u1"), headers={"authorization": SECRET}).headers["x-request-id"]


def test_cors_preflight_is_answered_for_an_allowed_origin_only(edge: Edge) -> None:
    def preflight(origin: str) -> httpx.Response:
        headers = {
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        }
        return httpx.options(edge.url("/api/v1/ai/image/task"), headers=headers, timeout=5, trust_env=False)

    allowed = preflight(ALLOWED_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    other = preflight("https://evil.example.net")
    assert "access-control-allow-origin" not in other.headers
    simple = _get(edge.url("/api/v1/ai/tasks"), headers={"origin": ALLOWED_ORIGIN, "authorization": SECRET})
    assert simple.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"]


def test_requests_without_credentials_are_limited_per_address(edge: Edge) -> None:
    def anonymous() -> int:
        return _get(edge.url("/api/v1/ai/tasks?user_id=u1")).status_code

    time.sleep(1.1)  # a full bucket: the token bucket refills each second
    # At once, so a slow machine does not spread them over refills; a bucket of N a second lets through at
    # most N now and N more at each refill while they run.
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=ANONYMOUS_PER_SECOND * 5) as pool:
        codes = list(pool.map(lambda _: anonymous(), range(ANONYMOUS_PER_SECOND * 10)))
    refills = math.ceil(time.monotonic() - started)
    admitted = len(codes) - codes.count(429)
    assert 429 in codes and 1 <= admitted <= ANONYMOUS_PER_SECOND * (1 + refills), codes
    # A caller with credentials is the task service's per-key limit's business, not this one's.
    keyed = [_get(edge.url("/api/v1/ai/tasks"), headers={"authorization": SECRET}).status_code for _ in range(10)]
    assert 429 not in keyed


def test_native_grpc_bodies_are_capped_like_rest_bodies(edge: Edge) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{edge.public}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.CreateTextTaskRequest(prompt="x" * 200_000, user_id="u1")
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateTextTask(request, timeout=10, metadata=[("authorization", SECRET)])
        assert "Payload Too Large" in (refused.value.details() or "")
        # A small call goes through to the (absent) task service: refused for another reason. With a key, so the
        # edge's per-IP limit on keyless calls (which the module's other tests draw on) is not what answers.
        with pytest.raises(grpc.RpcError) as unavailable:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10, metadata=[("authorization", SECRET)]
            )
        assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
