"""The list call's cursor paging (page_token / next_page_token) and status filter, over REST and gRPC."""

from __future__ import annotations

from typing import Any

import httpx

from aitask.v1 import task_service_pb2 as pb
from devstack.stack import LocalStack
from tests.e2e.helpers import SEEDREAM


def create(rest: httpx.Client, user_id: str, prompt: str) -> str:
    response = rest.post("/api/v1/ai/image/task", json={"prompt": prompt, "user_id": user_id, **SEEDREAM})
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


def page(rest: httpx.Client, **params: Any) -> dict[str, Any]:
    response = rest.get("/api/v1/ai/tasks", params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_page_tokens_walk_every_task_once_whatever_changes_meanwhile(rest: httpx.Client, user_id: str) -> None:
    made = [create(rest, user_id, f"page {n}") for n in range(5)]
    first = page(rest, user_id=user_id, limit=2)
    assert [task["task_id"] for task in first["tasks"]] == made[:-3:-1]
    # A task created and one deleted between pages: an offset would now repeat a task; the token does not.
    newest = create(rest, user_id, "after the first page")
    assert rest.delete(f"/api/v1/ai/task/{made[0]}").status_code == 200
    second = page(rest, user_id=user_id, limit=2, page_token=first["next_page_token"])
    third = page(rest, user_id=user_id, limit=2, page_token=second["next_page_token"])
    walked = [task["task_id"] for data in (first, second, third) for task in data["tasks"]]
    assert walked == made[:0:-1] and newest not in walked
    assert third.get("next_page_token", "") == ""  # the last page says so (proto3 JSON leaves "" out)


def test_the_status_filter_and_tokens_bound_to_their_filters(rest: httpx.Client, user_id: str) -> None:
    made = [create(rest, user_id, f"status {n}") for n in range(3)]
    assert rest.post(f"/api/v1/ai/task/{made[1]}/cancel").status_code in (200, 409)
    cancelled = page(rest, user_id=user_id, status="cancelled")["tasks"]
    assert all(task["status"] == "cancelled" for task in cancelled)

    token = page(rest, user_id=user_id, limit=1)["next_page_token"]
    other_filters = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "type": "video", "page_token": token})
    assert other_filters.status_code == 400 and other_filters.json()["message"].startswith("page_token: ")
    forged = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "page_token": "not-a-token"})
    assert forged.status_code == 400 and "page_token" in forged.json()["message"]
    both = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "page_token": token, "offset": 1})
    assert both.status_code == 400 and both.json()["message"].startswith("offset: ")
    unknown = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "status": "done"})
    assert unknown.status_code == 400 and unknown.json()["message"].startswith("status: ")


def test_page_tokens_over_grpc(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    made = [create(rest, user_id, f"grpc page {n}") for n in range(3)]
    stub = stack.task_stub()
    seen: list[str] = []
    request = pb.ListTasksRequest(user_id=user_id, limit=2)
    while True:
        data = stub.ListTasks(request, timeout=10).data
        seen += [task.task_id for task in data.tasks]
        if not data.next_page_token:
            break
        request.page_token = data.next_page_token
    assert seen == made[::-1]
