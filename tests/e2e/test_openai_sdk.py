"""The official `openai` Python SDK, unmodified, against the stack through Envoy's /v1/ (the OpenAI-compatible
door): every seed model, each call the SDK makes, each error class it raises, and its retries making no
second task."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from devstack.processes import ROOT, accepts, free_port
from devstack.stack import LocalStack
from tests.conftest import wait_until
from tests.e2e.helpers import openai_videos_provider

SEED_IMAGE_MODELS = {
    # model: (a size it takes, whether it answers URLs)
    "doubao-seedream-3-0-t2i-250415": ("1024x1024", True),
    "jimeng_high_aes_general_v21_L": ("512x512", True),
    "dall-e-3": ("1024x1024", False),
}
SEED_TEXT_MODELS = ["doubao-pro-4k", "gpt-4"]
SEED_VIDEO_MODEL = "jimeng_vgfm_t2v_l20"
RETIRED_VIDEO_MODELS = ["sora", "sora-2"]


@pytest.fixture
def user_key(stack: LocalStack, user_id: str) -> str:
    """A user-role key: the door acts for its user, who owns every task made with it."""
    return stack.create_api_key(user_id, name="openai sdk")


def sdk(stack: LocalStack, api_key: str, **options: object) -> openai.OpenAI:
    """The SDK pointed at Envoy, exactly as a user would point it at aitask."""
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{stack.ports.envoy}/v1",
        api_key=api_key,
        http_client=httpx.Client(trust_env=False),
        **options,
    )


@pytest.fixture
def client(stack: LocalStack, user_key: str) -> Iterator[openai.OpenAI]:
    with sdk(stack, user_key, max_retries=0, timeout=60) as made:
        yield made


def user_tasks(stack: LocalStack, user_id: str) -> list[dict]:
    with stack.rest() as rest:
        response = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["data"]["tasks"]


@pytest.mark.parametrize("model", SEED_IMAGE_MODELS)
def test_images_as_url_and_base64_for_every_seed_image_model(
    client: openai.OpenAI, stack: LocalStack, user_id: str, model: str
) -> None:
    size, answers_urls = SEED_IMAGE_MODELS[model]
    as_base64 = client.images.generate(
        model=model, prompt="a lighthouse at dusk", size=size, response_format="b64_json"
    )
    assert as_base64.data and as_base64.data[0].b64_json and as_base64.created > 0
    assert len(base64.b64decode(as_base64.data[0].b64_json)) > 100
    if answers_urls:
        as_url = client.images.generate(model=model, prompt="a lighthouse at dawn", size=size, response_format="url")
        assert as_url.data and as_url.data[0].url and as_url.data[0].url.startswith("http")
        assert httpx.get(as_url.data[0].url, trust_env=False).status_code == 200
    else:
        # The vendor's successor answers base64 only: the catalogue says so, and so does the 400.
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.generate(model=model, prompt="a lighthouse at dawn", size=size, response_format="url")
        assert "response_format" in refused.value.message
    # Each call is a task like any other, owned by the key's user.
    tasks = user_tasks(stack, user_id)
    assert {task["model"] for task in tasks} == {model}
    assert {task["status"] for task in tasks} == {"completed"}
    assert len(tasks) == (2 if answers_urls else 1)


@pytest.mark.parametrize("model", SEED_TEXT_MODELS)
def test_chat_plain_and_streamed_for_every_seed_text_model(
    client: openai.OpenAI, stack: LocalStack, user_id: str, model: str
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    completion = client.chat.completions.create(model=model, messages=messages, max_tokens=50, temperature=0.5)
    assert completion.object == "chat.completion" and completion.model == model
    text = completion.choices[0].message.content
    assert text and completion.choices[0].finish_reason == "stop" and completion.choices[0].message.role == "assistant"
    assert completion.usage and completion.usage.total_tokens > 0
    task_id = completion.id.removeprefix("chatcmpl-")

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed, chunks
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].usage and chunks[-1].usage.total_tokens > 0

    tasks = {task["task_id"]: task for task in user_tasks(stack, user_id)}
    assert len(tasks) == 2 and tasks[task_id]["text_result"] == text
    assert {task["type"] for task in tasks.values()} == {"text"}


def test_streamed_chat_ends_with_done_through_envoy(stack: LocalStack, user_key: str) -> None:
    body = {"model": "doubao-pro-4k", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(trust_env=False, timeout=60) as http:
        response = http.post(
            f"http://127.0.0.1:{stack.ports.envoy}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {user_key}"},
        )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 4, response.text


def test_models_lists_the_catalogue(client: openai.OpenAI, stack: LocalStack) -> None:
    models = {model.id: model for model in client.models.list()}
    with stack.rest() as rest:
        catalogue = rest.get("/api/v1/ai/models").json()["data"]["models"]
    assert set(models) == {entry["model"] for entry in catalogue}
    assert set(SEED_IMAGE_MODELS) | set(SEED_TEXT_MODELS) | {SEED_VIDEO_MODEL} <= set(models)
    assert models["doubao-pro-4k"].owned_by == "volcengine" and models["gpt-4"].owned_by == "openai"
    assert models["gpt-4"].object == "model"


def test_each_error_class(client: openai.OpenAI, stack: LocalStack, user_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(model="no-such-model", prompt="p")
    assert unknown.value.code == "model_not_found" and unknown.value.status_code == 404

    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model="doubao-seedream-3-0-t2i-250415", prompt="p", size="999x999")
    assert bad_size.value.param == "size" and "999x999" in bad_size.value.message

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="doubao-seedream-3-0-t2i-250415", messages=[{"role": "user", "content": "x"}]
        )

    with (
        pytest.raises(openai.AuthenticationError) as unauthenticated,
        sdk(stack, "ak_nope_nope", max_retries=0) as stranger,
    ):
        stranger.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert unauthenticated.value.status_code == 401

    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}], user="someone-else")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve("01ARZ3NDEKTSV4RRFFQ69G5FAV")
        # A test may have served sora-2 from a provider of its own ("openai-videos") and stopped it: a provider
        # with no live instance does not make the name ambiguous.
        for retired in RETIRED_VIDEO_MODELS:
            with pytest.raises(openai.BadRequestError) as retired_error:
                client.videos.create(model=retired, prompt="a calm sea")
            assert "retired" in retired_error.value.message
    assert user_tasks(stack, user_id) == []


def test_a_name_two_live_providers_serve_is_ambiguous_until_one_stops(
    client: openai.OpenAI, stack: LocalStack, user_id: str
) -> None:
    def refusal() -> str:
        with pytest.raises(openai.BadRequestError) as refused:
            client.videos.create(model="sora-2", prompt="a calm sea")
        return refused.value.message

    def ambiguous() -> str | None:
        message = refusal()
        return message if "more than one provider" in message else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with openai_videos_provider(stack):
            # The task service reads a new provider's catalogue within its cache's few seconds.
            message = wait_until(ambiguous, timeout=15)
            assert "openai/sora-2" in message and "openai-videos/sora-2" in message
        # Stopped, "openai-videos" has no live instance: the name means the gateway's own (retired) sora-2.
        assert "retired" in refusal()
    assert user_tasks(stack, user_id) == []


def test_rate_limit_is_a_rate_limit_error_with_retry_after(stack: LocalStack, user_id: str) -> None:
    limited = stack.create_api_key(user_id, name="limited", rate_limit=2)
    with sdk(stack, limited, max_retries=0) as client:
        for _ in range(2):
            client.models.list()
        with pytest.raises(openai.RateLimitError) as limited_error:
            client.models.list()
    assert int(limited_error.value.response.headers["retry-after"]) > 0
    assert limited_error.value.code == "rate_limit_exceeded"


def test_sdk_retries_reach_the_same_task(stack: LocalStack, user_key: str, user_id: str) -> None:
    """The upstream answers after 4 s, the SDK gives up on each attempt after 1.5 s and retries: every attempt
    reaches the first attempt's task, whose answer the last one gets."""
    marker = f"retry-{uuid.uuid4().hex[:8]}"
    with stack.sim() as sim:
        sim.set_faults("ark.chat", latency_s=4)
    try:
        with sdk(stack, user_key, max_retries=4, timeout=1.5) as client:
            completion = client.chat.completions.create(
                model="doubao-pro-4k", messages=[{"role": "user", "content": f"say {marker}"}]
            )
    finally:
        with stack.sim() as sim:
            sim.clear_faults()
    tasks = user_tasks(stack, user_id)
    assert len(tasks) == 1, tasks
    assert completion.id == f"chatcmpl-{tasks[0]['task_id']}"
    with stack.sim() as sim:
        assert len(sim.requests(marker)) == 1
    # A deliberate second request is a second task.
    with sdk(stack, user_key, max_retries=0, timeout=30) as client:
        client.chat.completions.create(model="doubao-pro-4k", messages=[{"role": "user", "content": f"say {marker}"}])
    assert len(user_tasks(stack, user_id)) == 2


def test_idempotency_key_header_is_passed_through(client: openai.OpenAI, stack: LocalStack, user_id: str) -> None:
    key = {"Idempotency-Key": f"door-{uuid.uuid4().hex}"}
    messages = [{"role": "user", "content": "once"}]
    first = client.chat.completions.create(model="gpt-4", messages=messages, extra_headers=key)
    again = client.chat.completions.create(model="gpt-4", messages=messages, extra_headers=key)
    assert first.id == again.id and len(user_tasks(stack, user_id)) == 1
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "twice"}], extra_headers=key
        )


# --- videos -----------------------------------------------------------------------------------------------------
@pytest.fixture
def videos(client: openai.OpenAI) -> Iterator[openai.resources.Videos]:
    """The Videos API, whose methods the SDK marks deprecated (the vendor shut Sora down; the shapes live on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield client.videos


def test_video_create_and_poll_then_download(videos: openai.resources.Videos, stack: LocalStack, user_id: str) -> None:
    video = videos.create_and_poll(model=SEED_VIDEO_MODEL, prompt="waves on a pier", size="1280x720")
    assert video.status == "completed" and video.object == "video" and video.progress == 100
    assert video.model == SEED_VIDEO_MODEL and video.size == "1280x720" and video.completed_at
    assert video.completed_at >= video.created_at and video.error is None

    content = videos.download_content(video.id).read()
    with stack.rest() as rest:
        task = rest.get(f"/api/v1/ai/task/result/{video.id}").json()["data"]
    assert task["type"] == "video" and task["status"] == "completed"
    assert task["parameters"]["aspect_ratio"] == "16:9"
    original = httpx.get(task["video_url"], trust_env=False).content
    assert len(content) > 1000 and hashlib.sha256(content).hexdigest() == hashlib.sha256(original).hexdigest()

    assert videos.retrieve(video.id).status == "completed"
    assert [task["task_id"] for task in user_tasks(stack, user_id)] == [video.id]


def test_video_list_pages_newest_first(videos: openai.resources.Videos) -> None:
    made = [videos.create(model=SEED_VIDEO_MODEL, prompt=f"clip {index}").id for index in range(3)]
    assert all(video.status in ("queued", "in_progress") for video in [videos.retrieve(made[0])])
    first = videos.list(limit=2)
    assert [video.id for video in first.data] == made[::-1][:2] and first.has_more
    second = videos.list(limit=2, after=first.data[-1].id)
    assert [video.id for video in second.data] == [made[0]] and not second.has_more
    assert [video.id for video in videos.list()] == made[::-1]


def test_video_delete_cancels_a_running_one(videos: openai.resources.Videos, stack: LocalStack, user_id: str) -> None:
    with stack.sim() as sim:
        sim.set_faults("visual.CVSync2AsyncSubmitTask", video_seconds=60)
    try:
        video = videos.create(model=SEED_VIDEO_MODEL, prompt="a slow sunset")
        wait_until(lambda: videos.retrieve(video.id).status == "in_progress", timeout=60)
        deleted = videos.delete(video.id)
    finally:
        with stack.sim() as sim:
            sim.clear_faults()
    assert deleted.deleted and deleted.id == video.id and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        videos.retrieve(video.id)
    assert user_tasks(stack, user_id) == []
    # The door cancelled it before deleting it: the cancel is what stops its polls and its upstream job.
    logs = stack.log_text("task_service") + stack.log_text("task_service_2")
    assert any('"task cancelled"' in line and video.id in line for line in logs.splitlines())


def test_video_content_of_an_unfinished_video_is_not_found(videos: openai.resources.Videos, stack: LocalStack) -> None:
    with stack.sim() as sim:
        sim.set_faults("visual.CVSync2AsyncSubmitTask", video_seconds=60)
    try:
        video = videos.create(model=SEED_VIDEO_MODEL, prompt="not yet")
        with pytest.raises(openai.NotFoundError) as not_ready:
            videos.download_content(video.id)
        assert not_ready.value.code == "video_not_ready"
        videos.delete(video.id)
    finally:
        with stack.sim() as sim:
            sim.clear_faults()


def test_a_wait_past_the_bound_answers_a_timeout_naming_the_task(
    stack: LocalStack, user_key: str, user_id: str, tmp_path: Path
) -> None:
    """A door that waits 2 s (OPENAI_COMPAT_WAIT_SECONDS) for a chat whose upstream takes 6 s: a 504 in OpenAI's
    shape that names the task, which goes on and completes."""
    port = free_port()
    door = stack.definitions["openai_door"]
    env = (
        stack.env | door.env | {"OPENAI_COMPAT_PORT": str(port), "OPENAI_COMPAT_WAIT_SECONDS": "2", "METRICS_PORT": "0"}
    )
    log = (tmp_path / "door.log").open("wb")
    process = subprocess.Popen(door.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    with stack.sim() as sim:
        sim.set_faults("ark.chat", latency_s=6)
    try:
        wait_until(lambda: accepts(port), timeout=60)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=user_key,
            max_retries=0,
            http_client=httpx.Client(trust_env=False),
        )
        with pytest.raises(openai.InternalServerError) as timed_out:
            client.chat.completions.create(model="doubao-pro-4k", messages=[{"role": "user", "content": "slowly"}])
    finally:
        with stack.sim() as sim:
            sim.clear_faults()
        process.terminate()
        process.wait(30)
        log.close()
    error = timed_out.value
    assert error.status_code == 504 and error.code == "timeout"
    task_id = error.body["task_id"]  # type: ignore[index]
    assert task_id in error.message and error.response.headers["x-aitask-task-id"] == task_id
    with stack.rest() as rest:
        task = rest.get(f"/api/v1/ai/task/result/{task_id}", params={"wait_seconds": 30}).json()["data"]
    assert task["status"] == "completed" and task["user_id"] == user_id
