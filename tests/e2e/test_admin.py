"""AdminService through Envoy's REST paths: roles, the queues (state, pause, resume) and the audit log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import LocalStack
from tests.conftest import wait_for_status
from tests.e2e.helpers import SEEDREAM

PRIORITIES = ["critical", "default", "low"]
# Workers read the paused set at most a second apart (README "Operating the queues").
PAUSE_TAKES_EFFECT_SECONDS = 1.5


def queues(rest: httpx.Client) -> dict[str, dict[str, Any]]:
    response = rest.get("/api/v1/admin/queues")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [queue["priority"] for queue in data] == PRIORITIES
    return {queue["priority"]: queue for queue in data}


def create(rest: httpx.Client, user_id: str, priority: str) -> str:
    body = {"prompt": f"{priority} work", "user_id": user_id, **SEEDREAM, "priority": priority}
    response = rest.post("/api/v1/ai/image/task", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


@pytest.fixture
def resumed_after(stack: LocalStack) -> Iterator[httpx.Client]:
    """The admin's client; every priority is resumed after the test, whatever it did (the stack is shared)."""
    with stack.rest() as rest:
        try:
            yield rest
        finally:
            for priority in PRIORITIES:
                rest.post(f"/api/v1/admin/queues/{priority}/resume", json={})


def test_viewers_read_admins_change_users_do_neither(stack: LocalStack, user_id: str) -> None:
    viewer = stack.create_api_key(f"viewer-{user_id}", "viewer")
    user = stack.create_api_key(user_id, "user")
    with stack.rest(viewer) as rest:
        assert set(queues(rest)["low"]) == {
            "priority",
            "queued",
            "started",
            "scheduled",
            "failed",
            "oldest_age_seconds",
            "paused",
            "finished_last_hour",
        }
        assert rest.get("/api/v1/admin/audit").status_code == 200
        refused = rest.post("/api/v1/admin/queues/low/pause", json={})
        assert refused.status_code == 403 and "admin key" in refused.json()["message"]
    with stack.rest(user) as rest:
        assert rest.get("/api/v1/admin/queues").status_code == 403
        assert rest.get("/api/v1/admin/audit").status_code == 403
    with stack.rest("") as rest:
        assert rest.get("/api/v1/admin/queues").status_code == 401
    # Refused actions change nothing and are not in the log.
    with stack.rest() as rest:
        assert queues(rest)["low"]["paused"] is False


def test_a_paused_priority_keeps_its_work_until_resumed_and_the_log_says_who(
    stack: LocalStack, resumed_after: httpx.Client, user_id: str
) -> None:
    rest = resumed_after
    paused = rest.post("/api/v1/admin/queues/low/pause", json={})
    assert paused.status_code == 200, paused.text
    assert paused.json()["data"]["paused"] is True
    time.sleep(PAUSE_TAKES_EFFECT_SECONDS)
    low = create(rest, user_id, "low")
    default = create(rest, user_id, "default")
    assert wait_for_status(rest, default, {"completed", "failed"})["status"] == "completed"
    # Workers are idle (the default task is done) and still leave the low one waiting.
    time.sleep(2)
    assert rest.get(f"/api/v1/ai/task/result/{low}").json()["data"]["status"] == "pending"
    state = queues(rest)["low"]
    assert state["paused"] is True and state["queued"] >= 1 and state["oldest_age_seconds"] > 1

    resumed = rest.post("/api/v1/admin/queues/low/resume", json={})
    assert resumed.status_code == 200 and resumed.json()["data"]["paused"] is False
    assert wait_for_status(rest, low, {"completed", "failed"})["status"] == "completed"
    assert queues(rest)["low"]["finished_last_hour"] >= 1

    entries = rest.get("/api/v1/admin/audit", params={"limit": 2}).json()["data"]
    key_id = stack.admin_key.split("_")[1]
    assert [(entry["action"], entry["target"]) for entry in entries] == [
        ("ResumeQueue", "queue low"),
        ("PauseQueue", "queue low"),
    ]
    assert all(entry["key_id"] == key_id and entry["source"] and entry["time"] for entry in entries)


def test_with_every_priority_paused_nothing_runs_until_one_resumes(resumed_after: httpx.Client, user_id: str) -> None:
    rest = resumed_after
    for priority in PRIORITIES:
        assert rest.post(f"/api/v1/admin/queues/{priority}/pause", json={}).status_code == 200
    time.sleep(PAUSE_TAKES_EFFECT_SECONDS)
    task_id = create(rest, user_id, "critical")
    time.sleep(2)
    assert rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["status"] == "pending"
    assert rest.post("/api/v1/admin/queues/critical/resume", json={}).status_code == 200
    assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"


def test_a_priority_that_does_not_exist_is_named(stack: LocalStack) -> None:
    with stack.rest() as rest:
        response = rest.post("/api/v1/admin/queues/urgent/pause", json={})
        assert response.status_code == 400
        assert response.json()["message"] == "priority: must be one of critical, default, low, not 'urgent'"
        assert rest.get("/api/v1/admin/audit", params={"limit": 101}).status_code == 400
