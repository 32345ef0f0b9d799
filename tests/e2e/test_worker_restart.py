"""With no worker running tasks wait, pending; a started worker completes them."""

from __future__ import annotations

import time

import httpx

from devstack.stack import LocalStack
from tests.conftest import wait_for_status
from tests.e2e.helpers import SEEDREAM, stop_dispatcher


def test_tasks_wait_pending_while_worker_is_stopped(rest: httpx.Client, stack: LocalStack, user_id: str) -> None:
    stop_dispatcher(stack)
    try:
        task_ids = [
            rest.post("/api/v1/ai/image/task", json={"prompt": f"boat {n}", "user_id": user_id, **SEEDREAM}).json()[
                "data"
            ]["task_id"]
            for n in range(3)
        ]
        time.sleep(2)
        statuses = {rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["status"] for task_id in task_ids}
        assert statuses == {"pending"}
    finally:
        stack.start("dispatcher")
    for task_id in task_ids:
        assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"
