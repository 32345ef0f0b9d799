"""OpenAI endpoints through the real ``openai`` SDK."""

from __future__ import annotations

import base64
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.upstream_simulator.helpers import OPENAI_KEY, decode_png, is_mp4
from upstream_simulator import SimulatorThread
from upstream_simulator.control import SimulatorControl

# The SDK marks every videos.* method deprecated (Sora shutdown); the simulator still serves them.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


def test_gpt_image_several_images(oai: OpenAI) -> None:
    resp = oai.images.generate(model="gpt-image-2.5-flare", prompt="a cat", size="1024x1024", n=3)
    assert len(resp.data) == 3 and len({item.b64_json for item in resp.data}) == 3
    assert all(item.revised_prompt is None and item.url is None for item in resp.data)


def test_gpt_image_returns_base64_and_usage(oai: OpenAI) -> None:
    resp = oai.images.generate(model="gpt-image-2.5-sunburst", prompt="a cat", size="1536x1024", quality="low")
    assert decode_png(base64.b64decode(resp.data[0].b64_json)) == (1536, 1024)
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.size == "1536x1024"


def test_unknown_image_model_is_not_found(oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.images.generate(model="dall-e-9", prompt="a cat")
    assert info.value.code == "model_not_found"


def test_chat_completion(oai: OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="gpt-5.5",
        messages=[{"role": "user", "content": "what is a simulator?"}],
        max_completion_tokens=100,
        temperature=0.7,
    )
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert "what is a simulator?" in resp.choices[0].message.content
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens > 0


def test_chat_temperature_out_of_range(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "hi"}], temperature=3)
    assert info.value.param == "temperature"


def test_wrong_key_is_authentication_error(sim: SimulatorThread) -> None:
    client = OpenAI(api_key="sk-wrong-key-123456", base_url=sim.url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "invalid_api_key"
    assert info.value.status_code == 401


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_prompt_fail_triggers(oai: OpenAI, status: int, exc_type: type[Exception]) -> None:
    with pytest.raises(exc_type) as info:
        oai.images.generate(model="gpt-image-2.5-sunburst", prompt=f"a cat [[fail:{status}]]")
    assert info.value.status_code == status
    assert info.value.request_id.startswith("req_")
    with pytest.raises(exc_type):
        oai.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": f"[[fail:{status}]]"}])
    with pytest.raises(exc_type):
        oai.videos.create(prompt=f"[[fail:{status}]]")


def test_video_lifecycle_with_progress_and_poll_header(oai: OpenAI, control: SimulatorControl) -> None:
    control.set_faults("openai.videos.create", video_seconds=1.0)
    video = oai.videos.create(model="sora-2", prompt="a dog", seconds="8", size="1280x720")
    # The multipart form fields were parsed.
    assert (video.status, video.progress, video.model, video.seconds, video.size) == (
        "queued", 0, "sora-2", "8", "1280x720"
    )  # fmt: skip
    raw = oai.videos.with_raw_response.retrieve(video.id)
    assert 50 <= int(raw.headers["openai-poll-after-ms"]) <= 1000
    with pytest.raises(openai.NotFoundError):
        oai.videos.download_content(video.id)

    statuses, progress = [], []
    done = oai.videos.retrieve(video.id)
    while done.status not in ("completed", "failed"):
        statuses.append(done.status)
        progress.append(done.progress)
        time.sleep(0.02)
        done = oai.videos.retrieve(video.id)
    assert "in_progress" in statuses
    assert progress == sorted(progress) and max(progress) < 100
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at
    assert is_mp4(oai.videos.download_content(video.id).content)
    thumbnail = oai.videos.download_content(video.id, variant="thumbnail").content
    assert decode_png(thumbnail) == (320, 180)


def test_create_and_poll_follows_server_hint(oai: OpenAI) -> None:
    video = oai.videos.create_and_poll(prompt="a cat")
    assert (video.status, video.seconds, video.size, video.model) == ("completed", "4", "720x1280", "sora-2")


def test_video_fail_trigger_ends_failed(oai: OpenAI) -> None:
    video = oai.videos.create_and_poll(prompt="a cat [[fail:video]]")
    assert video.status == "failed"
    assert video.error.code == "moderation_blocked" and video.error.message


@pytest.mark.parametrize(("kwargs", "param"), [({"seconds": "5"}, "seconds"), ({"size": "640x480"}, "size")])
def test_video_validation(oai: OpenAI, kwargs: dict[str, str], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.videos.create(prompt="a cat", **kwargs)
    assert info.value.param == param


def test_video_multipart_with_file_part(sim: SimulatorThread) -> None:
    response = httpx.post(
        sim.url + "/v1/videos",
        headers={"Authorization": f"Bearer {OPENAI_KEY}"},
        data={"prompt": "animate this", "seconds": "12", "size": "720x1280"},
        files={"input_reference": ("ref.png", b"\x89PNG fake", "image/png")},
        trust_env=False,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["seconds"] == "12"
    assert response.headers["x-request-id"].startswith("req_")


def test_unknown_video_is_not_found(oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.videos.retrieve("video_doesnotexist")
