"""Signed webhooks (issue 17), end to end: a real HTTP receiver on loopback verifies every message with the
`standardwebhooks` library, as a customer's would, and answers what each test scripts (500s, 429, 410, or nothing
at all while it is down)."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from aitask_common.tasks import FINAL_BUCKETS_FIELD, final_buckets, utcnow
from devstack.processes import free_port
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM, faults, restart_after_a_crash
from tests.e2e.test_cancel import IMAGES, JIMENG_VIDEO
from tests.e2e.test_models_catalogue import videos_provider  # noqa: F401 - a fixture

TEXT = {"provider": "openai", "model": "gpt-5.5"}
PATHS = {"image": SEEDREAM, "video": JIMENG_VIDEO, "text": TEXT}


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: str
    at: float

    @property
    def message(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1: it records every request and answers the scripted statuses in turn
    (then 200); it can go down and come back on the same port, and hold its next `stalls` answers back until
    `released` is set. Given a TLS context it serves https, its URL naming `name`, and notes each SNI name. With
    `keep_alive` it answers in HTTP/1.1 and keeps each connection open for the next request."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    stalls: int = 0
    released: threading.Event = field(default_factory=threading.Event)
    tls: ssl.SSLContext | None = None
    name: str = "127.0.0.1"
    server_names: list[str | None] = field(default_factory=list)
    keep_alive: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.name}:{self.port}/hooks/aitask"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                receiver.received.append(Received(dict(self.headers.items()), body, time.monotonic()))
                if receiver.stalls > 0:
                    receiver.stalls -= 1
                    receiver.released.wait(timeout=60)
                status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender is gone (a killed dispatcher)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self.tls.sni_callback = lambda _socket, server_name, _context: receiver.server_names.append(server_name)
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def of(self, task_id: str) -> list[Received]:
        return [request for request in self.received if request.message["data"]["task_id"] == task_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def secret_of(rest: httpx.Client, user_id: str) -> dict[str, Any]:
    response = rest.get("/api/v1/webhooks/secret", params={"user_id": user_id})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def verified(request: Received, secret: str) -> dict[str, Any]:
    """The message, verified as a receiver would (headers, signature, timestamp tolerance)."""
    message: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return message


def create(rest: httpx.Client, user_id: str, path: str, url: str, **fields: object) -> str:
    body = {"prompt": f"webhook {user_id}", "user_id": user_id, **PATHS[path], "webhook_url": url, **fields}
    response = rest.post(f"/api/v1/ai/{path}/task", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def deliveries(rest: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    response = rest.get(f"/api/v1/ai/task/{task_id}/webhooks")
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["data"]["messages"]
    return messages


def unsigned(task: dict[str, Any]) -> dict[str, Any]:
    """The task with its output links' query (expiry and signature) left out."""
    return task | {name: task[name].split("?")[0] for name in ("image_url", "video_url")}


@pytest.mark.parametrize("path", ["image", "video", "text"])
def test_the_final_event_carries_the_task_as_get_shows_it(
    stack: LocalStack, rest: httpx.Client, user_id: str, receiver: Receiver, path: str
) -> None:
    task_id = create(rest, user_id, path, receiver.url)
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=30)
    message = verified(request, secret_of(rest, user_id)["secret"])
    assert message["type"] == "task.completed"
    assert message["timestamp"].endswith("Z")
    result = wait_for_status(rest, task_id, {"completed"})
    # Output links are signed when rendered: the same link but for its expiry and signature.
    assert unsigned(message["data"]) == unsigned(result)
    if path != "text":
        link = message["data"][f"{path}_url"]
        assert link.startswith(f"{stack.env['OUTPUT_PUBLIC_URL']}/api/v1/ai/task/{task_id}/output?expires=")
        assert httpx.get(link, trust_env=False).status_code == 200
    assert message["data"]["webhook_url"] == receiver.url and message["data"]["webhook_events"] == ["final"]
    # The attempt is recorded once answered (the receiver has the request a moment before).
    (logged,) = wait_until(
        lambda: [m for m in deliveries(rest, task_id) if m["state"] == "delivered"] or None, timeout=10
    )
    assert logged["message_id"] == request.headers["webhook-id"]
    assert [attempt["status_code"] for attempt in logged["attempts"]] == [200]


def test_a_cancelled_task_sends_task_cancelled(
    stack: LocalStack, rest: httpx.Client, user_id: str, receiver: Receiver
) -> None:
    with faults(stack, IMAGES, latency_s=3.0):
        task_id = create(rest, user_id, "image", receiver.url)
        assert rest.post(f"/api/v1/ai/task/{task_id}/cancel", json={}).status_code == 200
        (request,) = wait_until(lambda: receiver.of(task_id), timeout=20)
    message = verified(request, secret_of(rest, user_id)["secret"])
    assert message["type"] == "task.cancelled" and message["data"]["status"] == "cancelled"
    assert message["data"]["cancel_reason"] == "user"


def test_started_is_sent_when_asked_for(rest: httpx.Client, user_id: str, receiver: Receiver) -> None:
    task_id = create(rest, user_id, "text", receiver.url, webhook_events=["started", "final"])
    wait_until(lambda: len(receiver.of(task_id)) == 2, timeout=30)
    secret = secret_of(rest, user_id)["secret"]
    types = [verified(request, secret)["type"] for request in receiver.of(task_id)]
    assert sorted(types) == ["task.completed", "task.started"]
    started = next(request.message for request in receiver.of(task_id) if request.message["type"] == "task.started")
    assert started["data"]["status"] == "processing"


def test_progress_is_sent_when_asked_for(
    rest: httpx.Client,
    stack: LocalStack,
    user_id: str,
    receiver: Receiver,
    videos_provider: None,  # noqa: F811 - the fixture imported above
) -> None:
    body = {
        "prompt": "a slow tide",
        "user_id": user_id,
        "provider": "openai-videos",
        "model": "sora-2",
        "webhook_url": receiver.url,
        "webhook_events": ["progress", "final"],
    }

    def created() -> httpx.Response | None:
        response = rest.post("/api/v1/ai/video/task", json=body)
        return response if response.status_code == 200 else None

    # Long enough that polls see it part done even on a loaded machine.
    with faults(stack, "openai.videos.create", video_seconds=16):
        task_id = wait_until(created, timeout=10).json()["data"]["task_id"]
        wait_until(lambda: any(r.message["type"] == "task.completed" for r in receiver.of(task_id)), timeout=90)
    secret = secret_of(rest, user_id)["secret"]
    messages = [verified(request, secret) for request in receiver.of(task_id)]
    progress = [message["data"]["progress"] for message in messages if message["type"] == "task.progress"]
    assert progress and all(0 < value < 100 for value in progress), messages


def test_two_500s_then_200_make_three_attempts_of_one_message(
    rest: httpx.Client, user_id: str, receiver: Receiver
) -> None:
    receiver.answers = [(500, {}), (500, {})]
    task_id = create(rest, user_id, "text", receiver.url)
    wait_until(lambda: len(receiver.of(task_id)) == 3, timeout=30)
    secret = secret_of(rest, user_id)["secret"]
    requests = receiver.of(task_id)
    assert len({request.headers["webhook-id"] for request in requests}) == 1
    assert all(verified(request, secret)["type"] == "task.completed" for request in requests)
    (logged,) = wait_until(
        lambda: [m for m in deliveries(rest, task_id) if m["state"] == "delivered"] or None, timeout=10
    )
    assert [attempt["status_code"] for attempt in logged["attempts"]] == [500, 500, 200]
    assert all("next_attempt" in attempt for attempt in logged["attempts"][:2])


def test_429_retry_after_is_honoured(rest: httpx.Client, user_id: str, receiver: Receiver) -> None:
    receiver.answers = [(429, {"retry-after": "2"})]
    task_id = create(rest, user_id, "text", receiver.url)
    first, second = wait_until(lambda: receiver.of(task_id)[:2] if len(receiver.of(task_id)) >= 2 else None)
    assert second.at - first.at >= 2.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_410_stops_delivery_for_the_task(
    stack: LocalStack, rest: httpx.Client, user_id: str, receiver: Receiver
) -> None:
    receiver.answers = [(410, {})]
    # The upstream takes 2 s: the started message has had its 410 before the final one exists.
    with faults(stack, "openai.chat", latency_s=2.0):
        task_id = create(rest, user_id, "text", receiver.url, webhook_events=["started", "final"])
        wait_for_status(rest, task_id, {"completed"})

    def settled() -> list[dict[str, Any]] | None:
        messages = deliveries(rest, task_id)
        return messages if messages and all(message["state"] != "pending" for message in messages) else None

    messages = wait_until(settled, timeout=15)
    assert len(receiver.of(task_id)) == 1
    assert messages[0]["state"] == "stopped" and messages[0]["attempts"][0]["status_code"] == 410
    assert all(message["state"] == "stopped" and not message["attempts"] for message in messages[1:])


def test_a_message_outlives_a_dead_receiver_and_a_killed_dispatcher(
    stack: LocalStack, rest: httpx.Client, user_id: str, receiver: Receiver
) -> None:
    receiver.stop()
    task_id = create(rest, user_id, "text", receiver.url)
    failed = wait_until(
        lambda: [m for m in deliveries(rest, task_id) if m["attempts"] and m["attempts"][0]["error"]], timeout=30
    )
    assert failed[0]["attempts"][0]["status_code"] == 0
    stack.kill("dispatcher")
    try:
        receiver.start()
    finally:
        restart_after_a_crash(stack)
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=40)
    assert verified(request, secret_of(rest, user_id)["secret"])["type"] == "task.completed"
    assert request.headers["webhook-id"] == failed[0]["message_id"]


def test_after_a_rotation_both_secrets_sign(rest: httpx.Client, user_id: str, receiver: Receiver) -> None:
    """The delivery loop keeps a user's secrets for minutes, but the rotation's mark in Redis has the next message
    signed by both at once."""
    old = secret_of(rest, user_id)["secret"]
    before = create(rest, user_id, "text", receiver.url)
    (first,) = wait_until(lambda: receiver.of(before), timeout=30)  # the loop now holds the user's secrets
    assert len(first.headers["webhook-signature"].split(" ")) == 1
    rotated = rest.post("/api/v1/webhooks/secret/rotate", json={"user_id": user_id})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["data"]
    assert new["secret"] != old and new["previous_secret"] == old and new["previous_expires"]
    assert secret_of(rest, user_id)["secret"] == new["secret"]
    task_id = create(rest, user_id, "text", receiver.url)
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=30)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(request, old) == verified(request, new["secret"])


def test_the_delivery_log_is_the_owners_only(
    stack: LocalStack, rest: httpx.Client, user_id: str, receiver: Receiver
) -> None:
    task_id = create(rest, user_id, "text", receiver.url)
    wait_until(lambda: receiver.of(task_id), timeout=30)
    with stack.rest(stack.create_api_key(user_id)) as owner:
        assert owner.get(f"/api/v1/ai/task/{task_id}/webhooks").status_code == 200
        assert owner.get("/api/v1/webhooks/secret").json()["data"]["user_id"] == user_id
    with stack.rest(stack.create_api_key(f"{user_id}-other")) as other:
        assert other.get(f"/api/v1/ai/task/{task_id}/webhooks").status_code == 404
        assert other.get("/api/v1/webhooks/secret", params={"user_id": user_id}).status_code == 403


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("ftp://127.0.0.1/", "http or https"),
    ],
)
def test_a_refused_webhook_url_is_400_and_stores_nothing(
    stack: LocalStack, rest: httpx.Client, user_id: str, url: str, problem: str
) -> None:
    body = {"prompt": "no", "user_id": user_id, **TEXT, "webhook_url": url}
    response = rest.post("/api/v1/ai/text/task", json=body)
    assert response.status_code == 400 and problem in response.json()["message"], response.text
    assert stack.tasks().count_documents({"user_id": user_id}) == 0


def stored_final_task(stack: LocalStack, user_id: str, url: str, updated_ago: timedelta) -> str:
    """A completed text task with a webhook, written straight to the store, as if its worker died (or Redis lost
    its due id) right after its final write: no message stored, no due id."""
    task_id = uuid.uuid4().hex
    now = utcnow()
    stack.tasks().insert_one(
        {
            "_id": task_id,
            "type": "text",
            "status": "completed",
            "user_id": user_id,
            **TEXT,
            "prompt": "swept",
            "parameters": {"priority": "default"},
            "attempts": 1,
            "text_result": "hello",
            "created": now - updated_ago - timedelta(seconds=3),
            "updated": now - updated_ago,
            "webhook_url": url,
            "webhook_events": ["final"],
            FINAL_BUCKETS_FIELD: final_buckets(now - updated_ago),
        }
    )
    return task_id


def test_a_final_message_its_writer_never_stored_is_swept_up(
    stack: LocalStack, rest: httpx.Client, user_id: str, receiver: Receiver
) -> None:
    """A task that turned final without its message (its writer died between the two writes), as the sweep finds
    it: the message is stored and delivered."""
    task_id = stored_final_task(stack, user_id, receiver.url, updated_ago=timedelta(seconds=9))
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=40)
    message = verified(request, secret_of(rest, user_id)["secret"])
    assert message["type"] == "task.completed" and message["data"]["text_result"] == "hello"
