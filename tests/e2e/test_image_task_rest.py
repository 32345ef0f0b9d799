"""An image task over REST through Envoy: create, complete, read, list, delete (issue: walking skeleton)."""

from __future__ import annotations

import base64
import re

import httpx

from devstack.stack import LocalStack
from tests.conftest import wait_for_status
from tests.e2e.helpers import SEEDREAM

# Seedream answers JPEG (its links end in .jpeg); the simulator does too.
JPEG_SIGNATURE = b"\xff\xd8\xff"


def create_image(rest: httpx.Client, user_id: str, **fields: object) -> dict:
    body = {"prompt": "a red fox in the snow", "user_id": user_id, **SEEDREAM, "size": "1024x1024", **fields}
    response = rest.post("/api/v1/ai/image/task", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_create_returns_pending_task_in_seed_shape(rest: httpx.Client, user_id: str) -> None:
    created = create_image(rest, user_id)
    assert set(created) == {"success", "data", "message"}
    assert created["success"] is True
    data = created["data"]
    assert set(data) == {"task_id", "status", "provider", "model"}
    assert data["status"] == "pending"
    assert data["provider"] == "volcengine"
    assert data["model"] == SEEDREAM["model"]
    assert re.fullmatch(r"[0-9A-Z]{26}", data["task_id"])


def test_image_task_completes_with_a_fetchable_jpeg_url(rest: httpx.Client, user_id: str) -> None:
    task_id = create_image(rest, user_id)["data"]["task_id"]
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "completed", result
    assert result["type"] == "image"
    assert result["image_url"].startswith("http://127.0.0.1:")
    assert result["image_base64"] == ""
    assert result["attempts"] == 1
    assert result["created"].endswith("Z") and result["updated"] >= result["created"]
    image = httpx.get(result["image_url"], trust_env=False)
    assert image.status_code == 200
    assert image.content.startswith(JPEG_SIGNATURE)


def test_image_task_can_return_base64(rest: httpx.Client, user_id: str) -> None:
    task_id = create_image(rest, user_id, response_format="b64_json")["data"]["task_id"]
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "completed", result
    assert base64.b64decode(result["image_base64"]).startswith(JPEG_SIGNATURE)
    # The bytes are stored too (issue 18): beside the base64, a signed link to the gateway's copy.
    assert f"/api/v1/ai/task/{task_id}/output?expires=" in result["image_url"]


def test_list_filters_by_type_newest_first_without_payloads(rest: httpx.Client, user_id: str) -> None:
    first = create_image(rest, user_id, response_format="b64_json")["data"]["task_id"]
    second = create_image(rest, user_id)["data"]["task_id"]
    wait_for_status(rest, first, {"completed"})

    listed = rest.get("/api/v1/ai/tasks", params={"user_id": user_id}).json()
    assert listed["success"] is True
    ids = [task["task_id"] for task in listed["data"]["tasks"]]
    assert ids == [second, first]
    assert all(task["image_base64"] == "" for task in listed["data"]["tasks"])
    assert listed["data"]["limit"] == 20 and listed["data"]["offset"] == 0

    images = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "type": "image"}).json()
    assert [task["task_id"] for task in images["data"]["tasks"]] == [second, first]
    texts = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "type": "text"}).json()
    assert texts["data"]["tasks"] == []

    paged = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "limit": 1, "offset": 1}).json()
    assert [task["task_id"] for task in paged["data"]["tasks"]] == [first]


def test_delete_then_not_found(rest: httpx.Client, user_id: str, stack: LocalStack) -> None:
    task_id = create_image(rest, user_id)["data"]["task_id"]
    wait_for_status(rest, task_id, {"completed"})
    deleted = rest.delete(f"/api/v1/ai/task/{task_id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"success": True, "data": {"task_id": task_id}, "message": "task deleted"}
    assert stack.tasks().find_one({"_id": task_id}) is None

    missing = rest.get(f"/api/v1/ai/task/result/{task_id}")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "message": f"task '{task_id}' not found", "code": "NOT_FOUND"}
    assert rest.delete(f"/api/v1/ai/task/{task_id}").status_code == 404
