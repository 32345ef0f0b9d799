"""Every catalogue model, through REST, the real vendor SDK and the simulator, to a result in the seed's shape."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from aitask_common.provider import load_catalogue
from devstack.processes import SIMULATOR_KEYS
from tests.conftest import wait_for_status

ROOT = Path(__file__).resolve().parents[2]
MODELS = [
    (catalogue.provider, model)
    for package in ("provider_volcengine", "provider_openai")
    for catalogue in [load_catalogue(ROOT / package / "catalogue.toml")]
    for model in catalogue.models
]


@pytest.mark.parametrize(("provider", "model"), MODELS, ids=[model.name for _, model in MODELS])
def test_every_model_completes(rest: httpx.Client, user_id: str, provider: str, model) -> None:  # noqa: ANN001
    body = {"prompt": "a calm sea at dawn", "user_id": user_id, "provider": provider, "model": model.name}
    response = rest.post(f"/api/v1/ai/{model.task_type}/task", json=body)
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]

    result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)
    assert result["status"] == "completed", result["error_message"]
    assert result["type"] == model.task_type
    if model.task_type == "image":
        # Seedream (Ark) answers JPEG, the others PNG.
        signature = b"\xff\xd8\xff" if model.upstream_api == "ark.images" else b"\x89PNG"
        if "url" in model.response_formats:
            image = httpx.get(result["image_url"], trust_env=False)
            assert image.content.startswith(signature)
        else:
            assert base64.b64decode(result["image_base64"]).startswith(signature)
    elif model.task_type == "video":
        headers = {"Authorization": f"Bearer {SIMULATOR_KEYS['openai']}"} if provider == "openai" else {}
        video = httpx.get(result["video_url"], headers=headers, trust_env=False)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    else:
        assert result["text_result"]
        usage = result["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_openai_image_keeps_revised_prompt(rest: httpx.Client, user_id: str) -> None:
    body = {
        "prompt": "a lantern",
        "user_id": user_id,
        "provider": "openai",
        "model": "dall-e-3",
        "response_format": "b64_json",
        "size": "1792x1024",
    }
    task_id = rest.post("/api/v1/ai/image/task", json=body).json()["data"]["task_id"]
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "completed", result["error_message"]
    assert result["revised_prompt"] and result["image_base64"]


# gpt-5.5 is a reasoning model: the upstream refuses `max_tokens`, so the provider must send `max_completion_tokens`.
@pytest.mark.parametrize(("provider", "model"), [("volcengine", "doubao-pro-4k"), ("openai", "gpt-5.5")])
def test_text_parameters_reach_the_upstream(rest: httpx.Client, user_id: str, provider: str, model: str) -> None:
    body = {
        "prompt": "say hi",
        "user_id": user_id,
        "provider": provider,
        "model": model,
        "max_tokens": 5,
        "temperature": 0.2,
    }
    task_id = rest.post("/api/v1/ai/text/task", json=body).json()["data"]["task_id"]
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "completed", result["error_message"]
    assert result["parameters"]["max_tokens"] == 5 and result["parameters"]["temperature"] == 0.2
    assert 0 < result["usage"]["completion_tokens"] <= 5


@pytest.mark.parametrize(
    ("path", "model", "fragment"),
    [
        ("video", "doubao-seedream-3-0-t2i-250415", "is a image model and cannot run a video task"),
        ("text", "jimeng_vgfm_t2v_l20", "is a video model and cannot run a text task"),
    ],
)
def test_wrong_task_type_for_model_is_400(
    rest: httpx.Client, user_id: str, path: str, model: str, fragment: str
) -> None:
    body = {"prompt": "p", "user_id": user_id, "provider": "volcengine", "model": model}
    response = rest.post(f"/api/v1/ai/{path}/task", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["message"]
