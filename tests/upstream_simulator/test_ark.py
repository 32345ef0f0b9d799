"""Ark endpoints through the real ``volcenginesdkarkruntime`` SDK."""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import (
    ArkAuthenticationError,
    ArkBadRequestError,
    ArkInternalServerError,
    ArkNotFoundError,
    ArkRateLimitError,
)

from tests.upstream_simulator.helpers import ARK_KEY, decode_jpeg, decode_png, fetch, is_mp4, wait_for
from upstream_simulator import SimulatorThread
from upstream_simulator.control import SimulatorControl

SEEDREAM = "doubao-seedream-3-0-t2i-250415"
SEEDANCE = "doubao-seedance-1-0-pro-250528"
CHAT = "doubao-1-5-pro-32k-250115"


def test_image_url_is_a_real_jpeg_of_the_requested_size(ark: Ark) -> None:
    resp = ark.images.generate(
        model=SEEDREAM, prompt="a cat", size="1024x768", seed=42, guidance_scale=2.5, response_format="url",
        watermark=False,
    )  # fmt: skip
    assert resp.model == SEEDREAM
    assert isinstance(resp.created, int) and resp.created > 1_700_000_000  # wire field is "created"
    assert resp.usage.generated_images == 1
    assert resp.usage.output_tokens == 1024 * 768 // 256
    url = resp.data[0].url
    assert url.startswith("http://127.0.0.1:") and "/files/" in url and ".jpeg?" in url
    jpeg = fetch(url)
    assert jpeg.headers["Content-Type"] == "image/jpeg"
    assert decode_jpeg(jpeg.content) == (1024, 768)


def test_image_b64_json_decodes_to_jpeg(ark: Ark) -> None:
    resp = ark.images.generate(model=SEEDREAM, prompt="a dog", size="512x2048", response_format="b64_json")
    assert resp.data[0].url is None
    assert decode_jpeg(base64.b64decode(resp.data[0].b64_json)) == (512, 2048)


def test_image_colour_depends_on_prompt_and_seed(ark: Ark) -> None:
    def palette(prompt: str, seed: int) -> bytes:
        data = ark.images.generate(model=SEEDREAM, prompt=prompt, seed=seed, response_format="b64_json").data[0]
        return base64.b64decode(data.b64_json)

    assert palette("a red fox", 1) == palette("a red fox", 1)
    assert palette("a red fox", 1) != palette("a blue whale", 1)
    assert palette("a red fox", 1) != palette("a red fox", 2)


@pytest.mark.parametrize("size", ["256x256", "4096x1024", "1024*1024", "big"])
def test_image_invalid_size_is_bad_request(ark: Ark, size: str) -> None:
    with pytest.raises(ArkBadRequestError) as info:
        ark.images.generate(model=SEEDREAM, prompt="a cat", size=size)
    assert info.value.code == "InvalidParameter"
    assert info.value.param == "size"


def test_image_unknown_model_is_not_found(ark: Ark) -> None:
    with pytest.raises(ArkNotFoundError) as info:
        ark.images.generate(model="doubao-1-5-pro-32k-250115", prompt="a cat")
    assert info.value.code == "InvalidEndpointOrModel.NotFound"


def test_request_id_is_echoed(sim: SimulatorThread) -> None:
    response = httpx.post(
        sim.url + "/api/v3/images/generations",
        headers={"Authorization": f"Bearer {ARK_KEY}", "X-Client-Request-Id": "20261127000000abcdefghijABCDEFGHIJ"},
        # Explicit nulls, as the SDK sends them, must be treated as absent.
        json={"model": SEEDREAM, "prompt": "a cat", "size": None, "seed": None, "response_format": None},
        trust_env=False,
    )
    assert response.status_code == 200
    assert response.headers["X-Client-Request-Id"] == "20261127000000abcdefghijABCDEFGHIJ"
    assert response.json()["data"][0]["size"] == "1024x1024"


def test_chat_reply_derives_from_prompt_with_consistent_usage(ark: Ark) -> None:
    resp = ark.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "tell me about pandas"}], max_tokens=100, temperature=0.7
    )
    assert "tell me about pandas" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    usage = resp.usage
    assert usage.prompt_tokens > 4 and usage.completion_tokens > 4
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_max_tokens_truncates_with_finish_reason_length(ark: Ark) -> None:
    resp = ark.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x " * 200}], max_tokens=5)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens <= 5


def test_wrong_api_key_raises_authentication_error(sim: SimulatorThread) -> None:
    client = Ark(api_key="wrong", base_url=sim.url + "/api/v3", max_retries=0)
    with pytest.raises(ArkAuthenticationError) as info:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
    assert info.value.code == "AuthenticationError"


@pytest.mark.parametrize(
    ("status", "exc_type", "code"),
    [
        (400, ArkBadRequestError, "InputTextSensitiveContentDetected"),
        (401, ArkAuthenticationError, "AuthenticationError"),
        (429, ArkRateLimitError, "RateLimitExceeded.EndpointRPMExceeded"),
        (500, ArkInternalServerError, "InternalServiceError"),
    ],
)
def test_prompt_fail_triggers(ark: Ark, status: int, exc_type: type[Exception], code: str) -> None:
    with pytest.raises(exc_type) as info:
        ark.images.generate(model=SEEDREAM, prompt=f"a cat [[fail:{status}]]")
    assert info.value.status_code == status
    assert info.value.code == code
    with pytest.raises(exc_type):
        ark.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": f"[[fail:{status}]]"}])


def test_video_task_runs_queued_running_succeeded(ark: Ark, control: SimulatorControl) -> None:
    created = ark.content_generation.tasks.create(
        model=SEEDANCE, content=[{"type": "text", "text": "a dog running --ratio 16:9 --dur 5"}], seed=11
    )
    assert created.id.startswith("cgt-")
    seen: list[str] = []

    def finished() -> bool:
        status = ark.content_generation.tasks.get(task_id=created.id).status
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == "succeeded"

    wait_for(finished)
    assert seen[-2:] == ["running", "succeeded"]
    assert seen[0] in ("queued", "running")
    task = ark.content_generation.tasks.get(task_id=created.id)
    assert (task.ratio, task.duration, task.seed, task.resolution) == ("16:9", 5, 11, "1080p")
    assert task.usage.completion_tokens == 1920 * 1080 * 24 * 5 // 1024
    assert task.updated_at >= task.created_at
    assert is_mp4(fetch(task.content.video_url).content)
    assert control.stats()["ark.tasks.create"]["ok"] == 1


def test_video_task_is_queued_right_after_submit(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.tasks.create", video_seconds=5)
    created = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "slow"}])
    task = ark.content_generation.tasks.get(task_id=created.id)
    assert task.status == "queued"
    assert getattr(task, "content", None) is None


def test_video_fail_trigger_ends_failed_with_error(ark: Ark) -> None:
    created = ark.content_generation.tasks.create(
        model=SEEDANCE, content=[{"type": "text", "text": "a dog [[fail:video]]"}]
    )
    task = wait_for(lambda: (t := ark.content_generation.tasks.get(task_id=created.id)).status == "failed" and t)
    assert task.error.code == "OutputVideoSensitiveContentDetected"
    assert task.error.message


def test_delete_cancels_queued_and_removes_finished(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.tasks.create", video_seconds=30)
    queued = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "a"}])
    ark.content_generation.tasks.delete(queued.id)
    assert ark.content_generation.tasks.get(task_id=queued.id).status == "cancelled"

    control.set_faults("ark.tasks.create", video_seconds=0)
    done = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "b"}])
    assert ark.content_generation.tasks.get(task_id=done.id).status == "succeeded"
    ark.content_generation.tasks.delete(done.id)
    with pytest.raises(ArkNotFoundError):
        ark.content_generation.tasks.get(task_id=done.id)


def test_list_tasks_filters_by_status(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.tasks.create", video_seconds=0)
    ids = [ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "x"}]).id]
    control.set_faults("ark.tasks.create", video_seconds=30)
    ids.append(ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "y"}]).id)
    page = ark.content_generation.tasks.list(page_num=1, page_size=10, status="succeeded")
    assert page.total == 1 and page.items[0].id == ids[0]


def test_unknown_task_is_not_found(ark: Ark) -> None:
    with pytest.raises(ArkNotFoundError) as info:
        ark.content_generation.tasks.get(task_id="cgt-20990101000000-nope")
    assert info.value.status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"ratio": "2:1"}, "ratio"), ({"duration": 60}, "duration"), ({"resolution": "4k"}, "resolution")],
)
def test_video_task_validation(ark: Ark, kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ArkBadRequestError) as info:
        ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "x"}], **kwargs)
    assert info.value.param == param


def test_return_last_frame_gives_png_url(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.tasks.create", video_seconds=0)
    created = ark.content_generation.tasks.create(
        model=SEEDANCE, content=[{"type": "text", "text": "x"}], ratio="9:16", resolution="720p", return_last_frame=True
    )
    task = ark.content_generation.tasks.get(task_id=created.id)
    assert decode_png(fetch(task.content.last_frame_url).content) == (720, 1280)
    assert time.time() - task.created_at < 60
