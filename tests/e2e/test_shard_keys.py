"""Every MongoDB query the services send carries its collection's shard key (aitask_common.sharding), so on a
sharded MongoDB none asks every shard, except the sweeps and admin reads named in ALLOWED_SCATTERS.

A stack of its own runs with tests/mongo_commands on its PYTHONPATH: its `sitecustomize` records each query
every service process sends (pymongo's command monitoring; production code unchanged). The test drives the main
cases through Envoy with a user's key, then checks each recorded query: an equality (or an $in) on the shard
key's first field, or `_id` where `_id` is the shard key. Inserts must carry the whole shard key.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitask_common.sharding import SHARD_KEYS
from devstack.processes import Ports
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import JIMENG_VIDEO, SEEDREAM, create_task, faults
from tests.e2e.test_webhooks import Receiver

# A stack of its own (not the session's `stack`, which conftest marks by itself).
pytestmark = pytest.mark.stack

COMMANDS_DIR = Path(__file__).resolve().parents[1] / "mongo_commands"
VIDEO_POLL = "visual.CVSync2AsyncGetResult"

# Queries allowed to ask every shard, by a caller on their way ("path:function"), with why; deploy/CAPACITY.md
# lists the same. Sweeps run once a pass (every shard answers from an index), not once a task.
SWEEP = "a sweep over every user's tasks, once a pass, answered on each shard by its index"
ALLOWED_SCATTERS: dict[str, str] = {
    "dispatcher_service/reconciler.py:Reconciler._requeue_stuck": SWEEP + " (in_flight, updated)",
    "dispatcher_service/cancels.py:expire_overdue": SWEEP + " (in_flight, status, deadline)",
    "dispatcher_service/settlement.py:Settlement.run_once": SWEEP + " (billing_open)",
    "dispatcher_service/webhook_delivery.py:WebhookDelivery.sweep": SWEEP + " (final_buckets)",
    "dispatcher_service/webhook_delivery.py:WebhookDelivery.reconcile": "pending messages, at start and rarely after",
    "aitask_common/ledger.py:Ledger.users_below": "a metric counting users short of credit, every scrape",
    "task_service/storage.py:TaskStore.add_created_buckets": "a migration, once per database",
    "task_service/storage.py:TaskStore.mark_in_flight": "a migration, once per database",
    "task_service/webhooks.py:WebhookReads.delivery_log": "a task's webhook deliveries: a rare read, by task_id",
    "task_service/output_http.py:OutputServer.serve_output": "LEFT TO DO: a signed output link names no user",
    "task_service/watch.py:task_reader.<locals>.read": "LEFT TO DO: waiters and watchers of any user share a read",
    "dispatcher_service/webhook_delivery.py:WebhookDelivery._final_task": (
        "LEFT TO DO: a final message's id names its task, not its user"
    ),
    "dispatcher_service/storage.py:TaskTransitions.owner": (
        "a job without its user (queued before jobs carried it): one read by id"
    ),
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Path]]:
    """A stack whose services record their MongoDB commands to the returned file."""
    workdir = tmp_path_factory.mktemp("recorded-stack")
    log = workdir / "mongo-commands.jsonl"
    local = LocalStack(Ports.free(), workdir)
    python_path = [str(COMMANDS_DIR), *filter(None, [local.env.get("PYTHONPATH")])]
    local.env |= {"PYTHONPATH": ":".join(python_path), "MONGO_COMMAND_LOG": str(log)}
    try:
        local.start_all()
        yield local, log
    finally:
        local.stop_all()


def drive_the_main_cases(stack: LocalStack, user_id: str) -> None:
    """Create, get, list and page, an idempotent create, a video polled to its end, a cancel, an output read, a
    webhook, the user's credits, a delete: each as a user does, with the user's own key."""
    key = stack.create_api_key(user_id)
    receiver = Receiver()
    receiver.start()
    try:
        with stack.rest(key) as rest:
            image = create_task(rest, user_id, "image", SEEDREAM, webhook_url=receiver.url)
            done = wait_for_status(rest, image, {"completed"})
            wait_until(lambda: receiver.of(image))
            assert httpx.get(done["image_url"], timeout=10).status_code == 200
            for _ in range(2):
                response = rest.post(
                    "/api/v1/ai/image/task",
                    json={"prompt": "once", "user_id": user_id, **SEEDREAM},
                    headers={"Idempotency-Key": "shard-keys"},
                )
                assert response.status_code == 200, response.text
            video = create_task(rest, user_id, "video", JIMENG_VIDEO)
            wait_for_status(rest, video, {"completed"})
            first = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "limit": 1}).json()["data"]
            token = first["next_page_token"]
            second = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "limit": 1, "page_token": token})
            assert second.status_code == 200, second.text
            assert rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "type": "video"}).status_code == 200
            with faults(stack, VIDEO_POLL, video_seconds=30.0):
                running = create_task(rest, user_id, "video", JIMENG_VIDEO)
                wait_for_status(rest, running, {"processing"})
                assert rest.post(f"/api/v1/ai/task/{running}/cancel").status_code == 200
            assert rest.get(f"/api/v1/ai/task/{image}/webhooks").status_code == 200
            assert rest.get("/api/v1/billing/balance").status_code == 200
            assert rest.get("/api/v1/billing/ledger").status_code == 200
            assert rest.delete(f"/api/v1/ai/task/{image}").status_code == 200
            assert rest.get(f"/api/v1/ai/task/result/{image}").status_code == 404
    finally:
        receiver.stop()
    time.sleep(3)  # the settlement and reconciler passes after the last task's end


def unrouted(record: dict[str, Any]) -> str | None:
    """Why a recorded command would ask every shard (or, an insert, could not be placed); None when it would not."""
    key = SHARD_KEYS.get(record["collection"])
    if key is None:
        return None  # an unsharded collection: one place to ask
    fields = record["fields"]
    if record["command"] == "insert":
        missing = [field for field in key if field not in fields]
        return f"insert without {missing}" if missing else None
    first = next(iter(key))
    if fields.get(first) in ("eq", "in"):
        return None
    return f"no equality on {first!r} (filter fields: {sorted(fields)})"


def test_every_query_carries_its_collections_shard_key(recorded: tuple[LocalStack, Path]) -> None:
    stack, log = recorded
    drive_the_main_cases(stack, f"user-{uuid.uuid4().hex[:10]}")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    seen = {(record["collection"], record["command"]) for record in records}
    assert {("tasks", "find"), ("tasks", "findAndModify"), ("outputs.chunks", "find"), ("ledger", "insert")} <= seen
    scattered = sorted(
        {
            f"{' < '.join(record['callers'][:3])}: {record['command']} {record['collection']}: {why}"
            for record in records
            if record["database"] == stack.database and not ALLOWED_SCATTERS.keys() & set(record["callers"])
            if (why := unrouted(record)) is not None
        }
    )
    assert not scattered, "queries that would ask every shard:\n" + "\n".join(scattered)
