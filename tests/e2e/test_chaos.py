"""Chaos on real processes: every accepted task ends completed, none is paid for twice upstream."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx

from aitask_common.queues import WATCH_JOBS_KEY, WATCH_KEY
from devstack.stack import LocalStack
from dispatcher_service.schedule import enqueue_task
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import (
    SEEDREAM,
    ensure_running,
    restart_after_a_crash,
    stop_dispatcher,
    upstream_calls,
    waiting_job_task_ids,
)
from upstream_simulator.control import SimulatorControl

JIMENG_VIDEO = {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}


def create(rest: httpx.Client, user_id: str, path: str = "image", **fields: object) -> str:
    body = {"prompt": "chaos", "user_id": user_id, **(SEEDREAM if path == "image" else JIMENG_VIDEO), **fields}
    response = rest.post(f"/api/v1/ai/{path}/task", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def test_sigkilled_worker_mid_call_task_still_completes(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    with stack.sim() as sim:
        sim.set_faults("ark.images", latency_s=3.0)
        try:
            task_id = create(rest, user_id)
            wait_until(lambda: stack.tasks().find_one({"_id": task_id})["status"] == "processing")
            stack.kill("dispatcher")
        finally:
            sim.clear_faults()
            restart_after_a_crash(stack)
    # Lease (4 s) expires, the reconciler (every 1 s, quiet for 2 s) re-enqueues it.
    result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=30)
    assert result["status"] == "completed" and result["attempts"] == 2


def test_sigkilled_worker_never_pays_twice_for_a_stored_video_job(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with stack.sim() as sim:
        sim.set_faults("visual.CVSync2AsyncGetResult", video_seconds=6.0)
        try:
            task_id = create(rest, user_id, "video", prompt=f"chaos {user_id}")
            wait_until(lambda: stack.tasks().find_one({"_id": task_id}).get("upstream_job_id"))
            stack.kill("dispatcher")
            restart_after_a_crash(stack)
            result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=40)
        finally:
            sim.clear_faults()
            restart_after_a_crash(stack)
        assert result["status"] == "completed" and result["video_url"]
        assert upstream_calls(stack, user_id, "visual.CVSync2AsyncSubmitTask") == 1


def test_redis_restarted_empty_with_tasks_pending(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    stop_dispatcher(stack)
    try:
        task_ids = [create(rest, user_id) for _ in range(5)]
        stack.restart_redis_empty()
        # Only a provider's heartbeat may have re-registered it since: no job, watch entry or poll survived.
        assert [key for key in stack.redis().scan_iter() if not key.startswith(b"aitask:registry:")] == []
    finally:
        ensure_running(stack, "redis", "dispatcher")
    for task_id in task_ids:
        assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=40)["status"] == "completed"


def test_database_down_create_is_503_and_writes_nothing_to_redis(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    watched_before, waiting_before = _watched(stack), set(waiting_job_task_ids(stack))
    stack.stop("ferretdb")
    try:
        response = rest.post("/api/v1/ai/image/task", json={"prompt": "x", "user_id": user_id, **SEEDREAM})
        assert response.status_code == 503
        assert response.json()["code"] == "UNAVAILABLE" and response.json()["success"] is False
        assert not any(stack.redis().scan_iter(match=f"aitask:inflight:{user_id}"))
        # No job and no watch entry appeared (earlier tests' tasks may only have finished meanwhile).
        assert _watched(stack) <= watched_before
        assert set(waiting_job_task_ids(stack)) <= waiting_before
    finally:
        stack.start("ferretdb")
    task_id = wait_until(lambda: _try_create(rest, user_id), timeout=30)
    assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"


def test_upstream_429_storm_all_tasks_complete_nothing_duplicated(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    with stack.sim() as sim:
        sim.set_faults("ark.images", rate_limit_rate=1.0)
        try:
            task_ids = [create(rest, user_id, prompt=f"storm {n} {user_id}") for n in range(20)]
            # Refused twice per task on average: retried through the storm, not only waiting it out. (A fixed
            # sleep saw one refusal each on a loaded machine.) Well before the 8 attempts a task may spend.
            wait_until(lambda: refused(sim, user_id) > 40, timeout=30)
            statuses = {stack.tasks().find_one({"_id": task_id})["status"] for task_id in task_ids}
            assert "failed" not in statuses and "completed" not in statuses
        finally:
            sim.clear_faults()
        for task_id in task_ids:
            assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
        # This test's upstream calls (by the user id in their prompts): retried through the storm, each paid once.
        answered = [call["status"] for call in sim.requests(user_id)]
        assert answered.count(429) > 40 and answered.count(200) == 20


def refused(sim: SimulatorControl, marker: str) -> int:
    return sum(call["status"] == 429 for call in sim.requests(marker))


def _watched(stack: LocalStack) -> set[str]:
    return {member.decode() for member in stack.redis().zrange("aitask:watch", 0, -1)}


def _try_create(rest: httpx.Client, user_id: str) -> str | None:
    response = rest.post("/api/v1/ai/image/task", json={"prompt": "back", "user_id": user_id, **SEEDREAM})
    return response.json()["data"]["task_id"] if response.status_code == 200 else None


def test_a_job_whose_task_does_not_exist_is_dropped_with_a_log_line(stack: LocalStack) -> None:
    job = enqueue_task(stack.redis(), "01NOSUCHTASK0000000000000", "critical")
    wait_until(lambda: job.get_status(refresh=True) == "finished")
    assert job.return_value() == "missing"
    log_lines = [json.loads(line) for line in stack.log_text("dispatcher").splitlines() if line.startswith("{")]
    assert any(
        line.get("task_id") == "01NOSUCHTASK0000000000000" and line["message"] == "job dropped: task does not exist"
        for line in log_lines
    )
    assert stack.redis().zscore(WATCH_KEY, "01NOSUCHTASK0000000000000") is None


def test_a_duplicate_job_for_a_finished_task_leaves_nothing_to_watch(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    task_id = create(rest, user_id)
    assert wait_for_status(rest, task_id, {"completed", "failed"})["status"] == "completed"
    # As the reconciler does when the task finishes between its query and its enqueue (due in a second, so
    # the watch entry is seen before a worker runs the job).
    job = enqueue_task(stack.redis(), task_id, "critical", timedelta(seconds=1))
    assert stack.redis().zscore(WATCH_KEY, task_id) is not None
    wait_until(lambda: job.get_status(refresh=True) == "finished")
    assert job.return_value() == "already-final"
    assert stack.redis().zscore(WATCH_KEY, task_id) is None
    assert stack.redis().hget(WATCH_JOBS_KEY, task_id) is None
