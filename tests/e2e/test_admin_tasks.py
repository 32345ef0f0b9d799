"""AdminService's tasks through Envoy's REST paths: search across users, a task's stored timeline, retry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM
from tests.e2e.test_cancel import JIMENG_VIDEO
from tests.e2e.test_webhooks import Receiver, receiver  # noqa: F401 - a fixture

LIFECYCLE = {"created", "claimed", "submitted", "polled", "output_stored", "completed", "failed", "retried_as"}


def create(rest: httpx.Client, user_id: str, prompt: str, model: dict[str, str] = SEEDREAM, **fields: Any) -> str:
    kind = "video" if model is JIMENG_VIDEO else "image"
    response = rest.post(f"/api/v1/ai/{kind}/task", json={"prompt": prompt, "user_id": user_id, **model, **fields})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def timeline(rest: httpx.Client, task_id: str) -> dict[str, Any]:
    response = rest.get(f"/api/v1/admin/task/{task_id}/timeline")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def events(data: dict[str, Any], names: set[str] = LIFECYCLE) -> list[str]:
    return [event["event"] for event in data["events"] if event["event"] in names]


def search(rest: httpx.Client, **params: Any) -> dict[str, Any]:
    response = rest.get("/api/v1/admin/tasks", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()["data"]
    return page


def test_an_image_tasks_timeline_holds_its_life_its_webhook_attempt_and_its_credit(
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    task_id = create(rest, user_id, "a timeline of a lighthouse", webhook_url=receiver.url)
    assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"

    def with_delivery_and_charge() -> dict[str, Any] | None:
        # Both are written after the task finished: the delivery by the dispatcher, the charge by the settlement.
        data = timeline(rest, task_id)
        return data if {"webhook_attempt", "credit_settle"} <= {event["event"] for event in data["events"]} else None

    data = wait_until(with_delivery_and_charge)
    assert data["task"]["task_id"] == task_id and data["task"]["status"] == "completed"
    assert events(data) == ["created", "claimed", "output_stored", "completed"]
    times = [event["time"] for event in data["events"]]
    assert times == sorted(times)
    (attempt,) = [event for event in data["events"] if event["event"] == "webhook_attempt"]
    assert attempt["detail"]["status_code"] == "200" and attempt["detail"]["webhook_event"] == "final"
    reserved, settled = [event for event in data["events"] if event["event"].startswith("credit_")]
    assert reserved["event"] == "credit_reserve" and int(reserved["detail"]["held"]) > 0
    assert int(settled["detail"]["amount"]) < 0 and settled["detail"]["held"] == "-" + reserved["detail"]["held"]


def test_a_video_tasks_timeline_has_its_upstream_job_and_each_poll(rest: httpx.Client, user_id: str) -> None:
    task_id = create(rest, user_id, "a timeline of a river", JIMENG_VIDEO)
    assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
    data = timeline(rest, task_id)
    names = events(data)
    assert names[:3] == ["created", "claimed", "submitted"] and names[-2:] == ["output_stored", "completed"]
    polls = names[3:-2]
    assert polls and set(polls) == {"polled"}, names
    submitted = next(event for event in data["events"] if event["event"] == "submitted")
    assert submitted["detail"]["upstream_job_id"]
    # Every poll, the one that found the video done last (the first may be that one: the polls are planned by
    # the model's learnt duration).
    states = [event["detail"]["state"] for event in data["events"] if event["event"] == "polled"]
    assert states[-1] == "succeeded" and set(states[:-1]) <= {"running"}, states


def test_a_failed_task_retried_by_an_admin_runs_again_as_a_new_task(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    failed = create(rest, user_id, "a harbour [[fail:400]]")
    assert wait_for_status(rest, failed, {"completed", "failed"})["status"] == "failed"
    assert events(timeline(rest, failed))[-1] == "failed"
    viewer = stack.create_api_key(f"viewer-{user_id}", "viewer")
    with stack.rest(viewer) as as_viewer:
        refused = as_viewer.post(f"/api/v1/admin/task/{failed}/retry", json={})
        assert refused.status_code == 403, refused.text
        assert as_viewer.get(f"/api/v1/admin/task/{failed}/timeline").status_code == 200

    response = rest.post(f"/api/v1/admin/task/{failed}/retry", json={})
    assert response.status_code == 200, response.text
    retry = response.json()["data"]["task_id"]
    assert retry != failed
    again = wait_for_status(rest, retry, {"completed", "failed"})
    assert again["status"] == "failed" and again["attempts"] == 1  # the same request: the same upstream answer
    assert (again["user_id"], again["prompt"], again["model"]) == (user_id, "a harbour [[fail:400]]", SEEDREAM["model"])
    old = timeline(rest, failed)
    assert old["events"][-1]["event"] == "retried_as" and old["events"][-1]["detail"]["task_id"] == retry
    audit = rest.get("/api/v1/admin/audit").json()["data"]
    assert {"action": "RetryTask", "target": f"task {failed}"}.items() <= audit[0].items()

    completed = create(rest, user_id, "a calm harbour")
    wait_for_status(rest, completed, {"completed"})
    refused = rest.post(f"/api/v1/admin/task/{completed}/retry", json={})
    assert refused.status_code == 409 and "only a failed task can be retried" in refused.json()["message"]
    assert rest.post("/api/v1/admin/task/no-such-task/retry", json={}).status_code == 404


def test_search_filters_every_users_tasks_and_pages_newest_first(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    images = [create(rest, user_id, f"search image {n}") for n in range(3)]
    video = create(rest, user_id, "search video", JIMENG_VIDEO)
    # Not left running: other tests count the simulator's video polls.
    assert rest.post(f"/api/v1/ai/task/{video}/cancel", json={}).status_code == 200
    everything = search(rest, user_id=user_id)
    assert [task["task_id"] for task in everything["tasks"]] == [video, *reversed(images)]
    only_images = search(rest, user_id=user_id, type="image", model=SEEDREAM["model"], provider="volcengine")
    assert [task["task_id"] for task in only_images["tasks"]] == list(reversed(images))
    assert [task["task_id"] for task in search(rest, task_id=images[1])["tasks"]] == [images[1]]
    window = {
        "created_after": before.isoformat(),
        "created_before": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    assert len(search(rest, user_id=user_id, **window)["tasks"]) == 4
    assert (
        search(rest, user_id=user_id, created_after=(datetime.now(UTC) + timedelta(hours=1)).isoformat())["tasks"] == []
    )

    paged: list[str] = []
    token = ""
    while True:
        page = search(rest, user_id=user_id, limit=2, page_token=token)
        paged += [task["task_id"] for task in page["tasks"]]
        token = page.get("next_page_token", "")
        if not token:
            break
    assert paged == [video, *reversed(images)]

    wrong = rest.get("/api/v1/admin/tasks", params={"created_after": "yesterday"})
    assert wrong.status_code == 400 and wrong.json()["message"].startswith("created_after:")
    naive = rest.get("/api/v1/admin/tasks", params={"created_before": "2026-12-01T00:00:00"})
    assert naive.status_code == 400 and "offset" in naive.json()["message"]
    assert rest.get("/api/v1/admin/tasks", params={"status": "lost"}).status_code == 400
    with stack.rest(stack.create_api_key(user_id, "user")) as as_user:
        assert as_user.get("/api/v1/admin/tasks", params={"user_id": user_id}).status_code == 403
        assert as_user.get(f"/api/v1/admin/task/{video}/timeline").status_code == 403
