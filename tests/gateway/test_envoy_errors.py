"""Envoy's own answers, from a real Envoy with the rendered config and no task service behind it: every
error it makes itself carries the public envelope, and a JSON body naming a field its request message
does not have is a 400 that names the field (and the one probably meant)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.processes import ENVOY, free_port
from gateway.config import render

IMAGE = "/api/v1/ai/image/task"
VIDEO = "/api/v1/ai/video/task"
REQUEST_TIMEOUT_SECONDS = 1.0


@contextlib.contextmanager
def running_envoy(workdir: Path, **options: Any) -> Iterator[str]:
    """Envoy on a free port with the rendered config, its task-service cluster pointing at a port nothing
    listens on; yields its base URL."""
    listen, admin, dead = free_port(), free_port(), free_port()
    config = render(listen_port=listen, admin_port=admin, task_service_ports=[dead], **options)
    path = workdir / "envoy.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(path), "--log-level", "error", "--disable-hot-restart"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, "envoy exited at start-up"
                assert time.monotonic() < deadline, "envoy did not listen within 30 s"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{listen}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_envoy(tmp_path_factory.mktemp("envoy"), request_timeout_seconds=REQUEST_TIMEOUT_SECONDS) as url:
        yield url


def envelope(response: httpx.Response, status: int, code: str) -> str:
    """The message of a response that must be the public error envelope with this status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == code, body
    assert set(body) == {"success", "message", "code"}, body
    return str(body["message"])


CREATE = {"prompt": "a fox", "user_id": "u1", "provider": "volcengine", "model": "doubao-seedream-3-0-t2i-250415"}


@pytest.mark.parametrize(
    ("path", "extra", "named", "suggested"),
    [
        (IMAGE, {"sise": "1792x1024"}, "sise", "size"),
        (IMAGE, {"Size": "1792x1024"}, "Size", "size"),
        (IMAGE, {"respone_format": "url"}, "respone_format", "response_format"),
        (VIDEO, {"aspect_ration": "9:16"}, "aspect_ration", "aspect_ratio"),
    ],
)
def test_misspelled_field_is_400_naming_it_and_the_field_meant(
    envoy: str, path: str, extra: dict[str, str], named: str, suggested: str
) -> None:
    response = httpx.post(envoy + path, json=CREATE | extra)
    message = envelope(response, 400, "INVALID_ARGUMENT")
    assert message == f"{named}: unknown field, did you mean '{suggested}'?"


def test_field_with_nothing_close_lists_the_fields(envoy: str) -> None:
    message = envelope(httpx.post(envoy + IMAGE, json=CREATE | {"status": "completed"}), 400, "INVALID_ARGUMENT")
    assert message.startswith("status: unknown field (fields: prompt, user_id, provider, model, size, seed,")


def test_a_field_of_another_create_is_unknown_here(envoy: str) -> None:
    # aspect_ratio belongs to videos: on an image create it is a mistake, not a setting.
    message = envelope(httpx.post(envoy + IMAGE, json=CREATE | {"aspect_ratio": "9:16"}), 400, "INVALID_ARGUMENT")
    assert message.startswith("aspect_ratio: unknown field")


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(CREATE | {"size": "1024x1024", "seed": 7}),
        # JSON names are what the transcoder accepts too.
        json.dumps({"prompt": "a fox", "userId": "u1", "provider": "p", "model": "m", "responseFormat": "url"}),
        # Keys inside values are not fields.
        json.dumps(CREATE | {"prompt": '{"sise": 1, "status": [2]}'}),
        ' { "prompt" : "a, fox}" ,\n "user_id":"u1" } ',
    ],
)
def test_known_fields_pass_to_the_upstream(envoy: str, body: str) -> None:
    # Past the check the request reaches routing, where no task service is listening.
    response = httpx.post(envoy + IMAGE, content=body, headers={"content-type": "application/json"})
    envelope(response, 503, "UNAVAILABLE")


def test_malformed_json_is_the_transcoders_400(envoy: str) -> None:
    response = httpx.post(
        envoy + IMAGE, content=b'{"prompt": "a fox", "sise"', headers={"content-type": "application/json"}
    )
    envelope(response, 400, "INVALID_ARGUMENT")


def test_unknown_path_is_404(envoy: str) -> None:
    envelope(httpx.get(envoy + "/api/v1/ai/nothing/here"), 404, "NOT_FOUND")


def test_body_over_the_cap_is_413(envoy: str) -> None:
    envelope(httpx.post(envoy + IMAGE, json=CREATE | {"prompt": "x" * 70_000}), 413, "PAYLOAD_TOO_LARGE")


def test_huge_header_is_431(envoy: str) -> None:
    response = httpx.get(envoy + "/api/v1/ai/tasks", headers={"x-padding": "x" * 70_000})
    envelope(response, 431, "HEADERS_TOO_LARGE")


def raw_exchange(envoy: str, request: bytes, wait: float = 0.0) -> tuple[str, dict[str, object]]:
    """Send raw bytes (for what httpx will not send), wait, and return the status line and the JSON body."""
    port = int(envoy.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        time.sleep(wait)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.decode().partition("\r\n\r\n")
    return head.splitlines()[0], json.loads(body)


def test_huge_url_is_refused_in_the_envelope(envoy: str) -> None:
    # Envoy counts the request line with the headers: a URL over the limit is a 431, not a 414.
    status, body = raw_exchange(
        envoy, b"GET /api/v1/ai/tasks?user_id=" + b"u" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status.startswith("HTTP/1.1 431"), status
    assert body["success"] is False and body["code"] == "HEADERS_TOO_LARGE", body


def test_request_not_finished_in_time_is_408(envoy: str) -> None:
    request = f"POST {IMAGE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    status, body = raw_exchange(envoy, request.encode(), wait=REQUEST_TIMEOUT_SECONDS + 0.5)
    assert status.startswith("HTTP/1.1 408"), status
    assert body["success"] is False and body["code"] == "REQUEST_TIMEOUT", body


def test_envoys_flood_guard_is_429(tmp_path: Path) -> None:
    with running_envoy(tmp_path, local_rate_limit_per_second=1) as url:
        responses = [httpx.get(url + "/api/v1/ai/tasks") for _ in range(5)]
    limited = [response for response in responses if response.status_code == 429]
    assert limited, [response.status_code for response in responses]
    envelope(limited[0], 429, "RESOURCE_EXHAUSTED")
