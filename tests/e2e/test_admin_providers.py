"""AdminService's providers through Envoy's REST paths: live instances with health, circuit and calls in flight;
drain and undrain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM

IMAGES = "ark.images"


def providers(rest: httpx.Client) -> list[dict[str, Any]]:
    response = rest.get("/api/v1/admin/providers")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def volcengine(rest: httpx.Client) -> list[dict[str, Any]]:
    return [instance for instance in providers(rest) if instance["provider"] == "volcengine"]


@pytest.fixture
def undrained_after(stack: LocalStack) -> Iterator[httpx.Client]:
    """The admin's client; every instance is undrained and the upstream well again after the test."""
    with stack.rest() as rest:
        try:
            yield rest
        finally:
            for instance in providers(rest):
                rest.post(f"/api/v1/admin/providers/{instance['instance_id']}/undrain", json={})
            with stack.sim() as sim:
                sim.clear_faults()


def create(rest: httpx.Client, user_id: str, prompt: str) -> str:
    response = rest.post("/api/v1/ai/image/task", json={"prompt": prompt, "user_id": user_id, **SEEDREAM})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def test_every_live_instance_is_listed_healthy_with_its_calls_in_flight(
    stack: LocalStack, undrained_after: httpx.Client, user_id: str
) -> None:
    rest = undrained_after
    listed = providers(rest)
    assert {"volcengine", "openai"} <= {instance["provider"] for instance in listed}
    for instance in listed:
        assert instance["health"] == "serving" and instance["circuit"] == "closed", instance
        assert instance["address"].startswith("127.0.0.1:") and instance["models"] > 0
        assert instance.get("draining", False) is False
    with stack.sim() as sim:
        sim.set_faults(IMAGES, latency_s=5.0)
        task_id = create(rest, user_id, "a slow lighthouse")
        # The instance reports its calls at each registry heartbeat (every 2 s).
        wait_until(lambda: any(instance.get("in_flight", 0) >= 1 for instance in volcengine(rest)), timeout=10)
        sim.clear_faults()
    wait_for_status(rest, task_id, {"completed"})
    viewer = stack.create_api_key(f"viewer-{user_id}", "viewer")
    with stack.rest(viewer) as as_viewer:
        assert len(providers(as_viewer)) == len(listed)
        refused = as_viewer.post(f"/api/v1/admin/providers/{listed[0]['instance_id']}/drain", json={})
        assert refused.status_code == 403, refused.text
    with stack.rest(stack.create_api_key(user_id)) as as_user:
        assert as_user.get("/api/v1/admin/providers").status_code == 403


def test_a_drained_provider_gets_no_new_work_until_undrained(
    stack: LocalStack, undrained_after: httpx.Client, user_id: str
) -> None:
    rest = undrained_after
    instances = volcengine(rest)
    for instance in instances:
        drained = rest.post(f"/api/v1/admin/providers/{instance['instance_id']}/drain", json={})
        assert drained.status_code == 200, drained.text
        assert drained.json()["data"]["draining"] is True
    assert all(instance["draining"] for instance in volcengine(rest))
    time.sleep(1.5)  # the dispatchers re-read the registry every second
    task_id = create(rest, user_id, "a drained lighthouse")
    time.sleep(2.0)
    # It waits pending; at each recheck (PROVIDER_RECHECK_SECONDS) a worker claims it for a few milliseconds, finds
    # no instance to call and puts it back, so a read can catch it processing.
    wait_until(lambda: rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]["status"] == "pending", timeout=5)
    with stack.sim() as sim:
        assert sim.requests(task_id) == []

    for instance in instances:
        undrained = rest.post(f"/api/v1/admin/providers/{instance['instance_id']}/undrain", json={})
        assert undrained.status_code == 200 and undrained.json()["data"].get("draining", False) is False
    assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
    actions = [(entry["action"], entry["target"]) for entry in rest.get("/api/v1/admin/audit").json()["data"]]
    assert ("UndrainProvider", f"instance {instances[-1]['instance_id']}") == actions[0]
    assert ("DrainProvider", f"instance {instances[0]['instance_id']}") in actions
    missing = rest.post("/api/v1/admin/providers/no-such-instance/drain", json={})
    assert missing.status_code == 404 and "no-such-instance" in missing.json()["message"]
