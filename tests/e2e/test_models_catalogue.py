"""Issue 16 items 5 and 6, through REST via Envoy and native gRPC: the live model catalogue (ListModels), a
pending task's queue position and a running video's progress."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from aitask.v1 import task_service_pb2 as pb
from aitask_common.provider import load_catalogue
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM, faults, openai_videos_provider, stop_dispatcher

ROOT = Path(__file__).resolve().parents[2]
CATALOGUES = [
    load_catalogue(ROOT / package / "catalogue.toml") for package in ("provider_volcengine", "provider_openai")
]
RETIRED = {(catalogue.provider, model.name) for catalogue in CATALOGUES for model in catalogue.models if model.retired}


def listed(rest: httpx.Client, model_type: str = "") -> list[dict[str, Any]]:
    response = rest.get("/api/v1/ai/models", params={"type": model_type} if model_type else None)
    assert response.status_code == 200, response.text
    models: list[dict[str, Any]] = response.json()["data"]["models"]
    return models


def by_name(models: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(model["provider"], model["model"]): model for model in models}


def test_every_published_model_is_listed_with_what_a_create_may_ask(stack: LocalStack, rest: httpx.Client) -> None:
    models = listed(rest)
    assert [(m["provider"], m["model"]) for m in models] == sorted((m["provider"], m["model"]) for m in models)
    found = by_name(models)
    for catalogue in CATALOGUES:
        for model in catalogue.models:
            entry = found[(catalogue.provider, model.name)]
            assert entry["type"] == model.task_type and entry["asynchronous"] == model.asynchronous
            assert entry["sizes"] == list(model.sizes) and entry["aspect_ratios"] == list(model.aspect_ratios)
            assert (entry["default_size"], entry["default_aspect_ratio"]) == (
                model.default_size,
                model.default_aspect_ratio,
            )
            assert entry["response_formats"] == list(model.response_formats)
            assert entry["max_prompt_chars"] == model.max_prompt_chars
            assert entry["max_tokens_limit"] == model.max_tokens_limit
            assert entry["served_model"] == (model.upstream_model or model.name)
            assert entry["alternative"] == model.alternative and entry["note"] == model.note
            assert entry["live_instances"] >= 1
            # Retired: listed (so a client learns the alternative) but not available.
            assert entry["available"] is (not model.retired)
    assert found[("openai", "sora")]["available"] is False and found[("openai", "sora")]["alternative"]
    assert found[("openai", "dall-e-3")]["served_model"] == "gpt-image-2.5-sunburst"

    # Native gRPC answers the same catalogue. A provider an earlier test has just stopped may still be listed by
    # one of the two answers (its registry entry expires within REGISTRY_TTL_SECONDS): ask until they agree.
    def grpc_listed_as_rest() -> list[dict[str, Any]] | None:
        answer = stack.task_stub().ListModels(pb.ListModelsRequest(), timeout=10)
        models = json_format.MessageToDict(
            answer.data, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )["models"]
        return list(models) if by_name(models).keys() == found.keys() else None

    grpc_models = wait_until(grpc_listed_as_rest, timeout=10)
    assert [m for m in grpc_models if m["provider"] in ("openai", "volcengine")] == [
        m for m in models if m["provider"] in ("openai", "volcengine")
    ]


def test_the_type_filter(stack: LocalStack, rest: httpx.Client) -> None:
    videos = listed(rest, "video")
    assert videos and {model["type"] for model in videos} == {"video"}
    assert {(m["provider"], m["model"]) for m in videos} == {
        (m["provider"], m["model"]) for m in listed(rest) if m["type"] == "video"
    }

    response = rest.get("/api/v1/ai/models", params={"type": "audio"})
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "message": "type: must be one of image, video, text (got 'audio')",
        "code": "INVALID_ARGUMENT",
    }
    with pytest.raises(grpc.RpcError) as refused:
        stack.task_stub().ListModels(pb.ListModelsRequest(type="audio"), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_live_instances_follow_the_providers(stack: LocalStack, rest: httpx.Client) -> None:
    def instances(provider: str) -> set[tuple[int, bool]]:
        """(live instances, available) of the provider's models the vendor did not retire."""
        return {
            (m["live_instances"], m["available"])
            for m in listed(rest)
            if m["provider"] == provider and (provider, m["model"]) not in RETIRED
        }

    # An instance another test killed stays registered until its heartbeat key expires.
    wait_until(lambda: instances("volcengine") == {(1, True)}, timeout=10)
    second = stack.add_provider_instance("provider_volcengine", "provider_volcengine_catalogue")
    stack.start(second.name)
    try:
        wait_until(lambda: instances("volcengine") == {(2, True)}, timeout=10)
    finally:
        stack.stop(second.name)
    wait_until(lambda: instances("volcengine") == {(1, True)}, timeout=10)

    stack.stop("provider_openai")
    try:
        # Still listed (a create for it waits, pending, for an instance), but not available.
        wait_until(lambda: instances("openai") == {(0, False)}, timeout=10)
        answer = stack.task_stub().ListModels(pb.ListModelsRequest(type="text"), timeout=10)
        assert {(m.live_instances, m.available) for m in answer.data.models if m.provider == "openai"} == {(0, False)}
    finally:
        stack.start("provider_openai")
    wait_until(lambda: instances("openai") == {(1, True)}, timeout=10)


@pytest.fixture
def held_dispatcher(stack: LocalStack) -> Iterator[None]:
    """No dispatcher while the test fills the queue (the test starts one); the usual one again afterwards."""
    stop_dispatcher(stack)
    try:
        yield
    finally:
        stop_dispatcher(stack)
        stack.start("dispatcher")
        with stack.sim() as sim:
            sim.clear_faults()


def test_pending_tasks_know_their_place_in_the_queue(
    stack: LocalStack, rest: httpx.Client, held_dispatcher: None
) -> None:
    # Two users: each may have 30 tasks in flight in the test stack.
    users = [f"queue-{n}-{time.monotonic_ns()}" for n in range(2)]
    task_ids = []
    for n in range(50):
        body = {"prompt": f"queued {n}", "user_id": users[n % 2], "priority": "low", **SEEDREAM}
        response = rest.post("/api/v1/ai/image/task", json=body)
        assert response.status_code == 200, response.text
        task_ids.append(response.json()["data"]["task_id"])

    def positions() -> list[int | None]:
        tasks = [rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"] for task_id in task_ids]
        return [task.get("queue_position") if task["status"] == "pending" else None for task in tasks]

    before = positions()
    assert None not in before
    # In creation order, one apart: nothing else is queued at low priority behind a held dispatcher but
    # what was there before (the same for every task).
    assert before == list(range(before[0], before[0] + 50)), before
    # gRPC reports the same.
    last = stack.task_stub().GetTaskResult(pb.GetTaskResultRequest(task_id=task_ids[-1]), timeout=10).data
    assert last.HasField("queue_position") and last.queue_position == before[-1]

    # One worker, 0.3 s per image: the queue drains slowly, and the positions go down with it.
    with stack.sim() as sim:
        sim.set_faults("ark.images", latency_s=0.3)
    stack.start("dispatcher", {"WORKER_CONCURRENCY": "1"})
    wait_until(lambda: (last := positions()[-1]) is not None and last <= before[-1] - 5)
    # Held again (a warm stop finishes the running task), so the queue stands still while it is read.
    stop_dispatcher(stack)
    after = positions()
    waiting = [n for n, position in enumerate(after) if position is not None]
    # The tasks that left the queue are the first ones, and every task still waiting moved up as far.
    assert waiting and waiting == list(range(waiting[0], 50)), after
    assert len({before[n] - after[n] for n in waiting}) == 1 and before[-1] - after[-1] >= 5, (before, after)
    stack.start("dispatcher")
    with stack.sim() as sim:
        sim.clear_faults()
    for task_id in task_ids:
        finished = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=90)
        assert finished["status"] == "completed" and "queue_position" not in finished


@pytest.fixture
def videos_provider(stack: LocalStack) -> Iterator[None]:
    """provider_openai with a catalogue that serves sora-2 as provider "openai-videos" (see its __main__)."""
    with openai_videos_provider(stack):
        yield


def test_a_running_video_reports_the_upstreams_progress(
    stack: LocalStack, rest: httpx.Client, user_id: str, videos_provider: None
) -> None:
    # Long enough for two polls to see progress even when a loaded machine delays them.
    with faults(stack, "openai.videos.create", video_seconds=16):
        body = {"prompt": "a slow tide", "user_id": user_id, "provider": "openai-videos", "model": "sora-2"}

        def created() -> httpx.Response | None:
            # A task-service replica may not have read the new provider's catalogue yet.
            response = rest.post("/api/v1/ai/video/task", json=body)
            return response if response.status_code == 200 else None

        task_id = wait_until(created, timeout=10).json()["data"]["task_id"]
        seen: list[int] = []

        def progressed() -> bool:
            task = rest.get(f"/api/v1/ai/task/result/{task_id}").json()["data"]
            assert task["status"] in ("pending", "processing"), task
            if "progress" in task and (not seen or task["progress"] != seen[-1]):
                seen.append(task["progress"])
            return len(seen) >= 2

        wait_until(progressed, timeout=30, interval=0.2)
        assert seen == sorted(seen) and all(0 < progress < 100 for progress in seen), seen
        running = stack.task_stub().GetTaskResult(pb.GetTaskResultRequest(task_id=task_id), timeout=10).data
        assert running.status == "processing" and running.HasField("progress")

        finished = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=30)
        assert finished["status"] == "completed", finished["error_message"]
        # Progress is for running tasks only.
        assert "progress" not in finished
