"""Every catalogue model, through REST, the real vendor SDK and the simulator, to a result in the seed's shape;
aliases served by their successor and recorded as such, retired models refused naming an alternative, and the
parameters a client sets seen in the request the vendor received (the simulator's request log), not as echoes."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from ulid import ULID

from aitask_common.provider import load_catalogue
from devstack.processes import SIMULATOR_KEYS
from devstack.stack import LocalStack
from tests.conftest import wait_for_status

ROOT = Path(__file__).resolve().parents[2]
MODELS = [
    (catalogue.provider, model)
    for package in ("provider_volcengine", "provider_openai")
    for catalogue in [load_catalogue(ROOT / package / "catalogue.toml")]
    for model in catalogue.models
]
SERVED = [(provider, model) for provider, model in MODELS if not model.retired]
RETIRED = [(provider, model) for provider, model in MODELS if model.retired]


def marker() -> str:
    """A word no other test's prompt holds: finds this test's requests in the simulator's log."""
    return f"m{ULID()}".lower()


def sent_upstream(stack: LocalStack, mark: str) -> list[dict[str, Any]]:
    """The bodies of the vendor requests that carried `mark`, as the simulator received them."""
    with stack.sim() as sim:
        return [request["json"] for request in sim.requests(mark)]


@pytest.mark.parametrize(("provider", "model"), SERVED, ids=[model.name for _, model in SERVED])
def test_every_model_completes(rest: httpx.Client, user_id: str, provider: str, model) -> None:  # noqa: ANN001
    body = {"prompt": "a calm sea at dawn", "user_id": user_id, "provider": provider, "model": model.name}
    response = rest.post(f"/api/v1/ai/{model.task_type}/task", json=body)
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]

    result = wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)
    assert result["status"] == "completed", result["error_message"]
    assert result["type"] == model.task_type
    # No silent substitution: the task says who served it (the alias target for an alias).
    assert (result["served_provider"], result["served_model"]) == (provider, model.upstream_model or model.name)
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


@pytest.mark.parametrize(("provider", "model"), RETIRED, ids=[model.name for _, model in RETIRED])
def test_a_retired_model_is_refused_naming_an_alternative(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    provider: str,
    model,  # noqa: ANN001
) -> None:
    body = {"prompt": "a calm sea at dawn", "user_id": user_id, "provider": provider, "model": model.name}
    response = rest.post(f"/api/v1/ai/{model.task_type}/task", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["success"] is False and answer["code"] == "INVALID_ARGUMENT"
    assert f"'{model.name}' was retired by the vendor" in answer["message"]
    assert answer["message"].endswith(f"use {model.alternative} instead")
    assert stack.tasks().count_documents({"user_id": user_id}) == 0
    # The alternative it names is a model that serves the same kind of task.
    alternative_provider, alternative = model.alternative.split("/")
    assert (alternative_provider, alternative, model.task_type) in {
        (served_provider, served.name, served.task_type) for served_provider, served in SERVED
    }


def test_an_image_alias_is_served_by_its_successor(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    mark = marker()
    body = {"prompt": f"a lantern {mark}", "user_id": user_id, "provider": "openai", "model": "dall-e-3"}
    created = rest.post("/api/v1/ai/image/task", json=body).json()["data"]
    assert (created["provider"], created["model"]) == ("openai", "dall-e-3")
    result = wait_for_status(rest, created["task_id"], {"completed", "failed"})
    assert result["status"] == "completed", result["error_message"]
    assert (result["model"], result["served_model"]) == ("dall-e-3", "gpt-image-2.5-sunburst")
    # The successor answers base64, with no revised prompt.
    assert base64.b64decode(result["image_base64"]).startswith(b"\x89PNG") and not result["revised_prompt"]
    (sent,) = sent_upstream(stack, mark)
    assert sent["model"] == "gpt-image-2.5-sunburst" and "response_format" not in sent


def test_an_alias_refuses_what_its_successor_does_not_take(rest: httpx.Client, user_id: str) -> None:
    body = {"prompt": "a lantern", "user_id": user_id, "provider": "openai", "model": "dall-e-3"}
    response = rest.post("/api/v1/ai/image/task", json={**body, "response_format": "url"})
    assert response.status_code == 400
    assert response.json()["message"] == "response_format: 'url' is not allowed for dall-e-3 (allowed: b64_json)"
    response = rest.post("/api/v1/ai/image/task", json={**body, "size": "1792x1024"})
    assert response.status_code == 400 and "allowed: 1024x1024, 1536x1024, 1024x1536" in response.json()["message"]


# gpt-5.5 is a reasoning model: the upstream refuses `max_tokens`, so the provider must send
# `max_completion_tokens`; gpt-4 is an alias of it.
@pytest.mark.parametrize(
    ("provider", "model", "served", "tokens_field"),
    [
        ("volcengine", "doubao-pro-4k", "doubao-pro-4k", "max_tokens"),
        ("openai", "gpt-5.5", "gpt-5.5", "max_completion_tokens"),
        ("openai", "gpt-4", "gpt-5.5", "max_completion_tokens"),
    ],
)
def test_text_parameters_reach_the_upstream(
    stack: LocalStack, rest: httpx.Client, user_id: str, provider: str, model: str, served: str, tokens_field: str
) -> None:
    mark = marker()
    body = {
        "prompt": f"say hi {mark}",
        "user_id": user_id,
        "provider": provider,
        "model": model,
        "max_tokens": 5,
        "temperature": 0.2,
    }
    task_id = rest.post("/api/v1/ai/text/task", json=body).json()["data"]["task_id"]
    result = wait_for_status(rest, task_id, {"completed", "failed"})
    assert result["status"] == "completed", result["error_message"]
    assert result["served_model"] == served
    assert 0 < result["usage"]["completion_tokens"] <= 5
    (sent,) = sent_upstream(stack, mark)
    assert (sent["model"], sent[tokens_field], sent["temperature"]) == (served, 5, 0.2)
    # The other spelling is not sent alongside (a reasoning model refuses `max_tokens`; Ark's SDK sends nulls).
    assert all(sent.get(key) is None for key in {"max_tokens", "max_completion_tokens"} - {tokens_field})


@pytest.mark.parametrize(
    ("path", "model", "fields", "expected"),
    [
        ("image", "doubao-seedream-3-0-t2i-250415", {"size": "1280x720", "seed": 42}, {"size": "1280x720", "seed": 42}),
        (
            "image",
            "jimeng_high_aes_general_v21_L",
            {"size": "512x288", "seed": 7},
            {"width": 512, "height": 288, "seed": 7},
        ),
        ("video", "jimeng_vgfm_t2v_l20", {"aspect_ratio": "9:16", "seed": 11}, {"aspect_ratio": "9:16", "seed": 11}),
    ],
)
def test_seed_and_size_reach_the_upstream(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    path: str,
    model: str,
    fields: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    mark = marker()
    body = {"prompt": f"a harbour {mark}", "user_id": user_id, "provider": "volcengine", "model": model, **fields}
    task_id = rest.post(f"/api/v1/ai/{path}/task", json=body).json()["data"]["task_id"]
    assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
    # The submit (or the one call) carried the prompt; a video's polls carry only the vendor's task id.
    sent = sent_upstream(stack, mark)
    assert len(sent) == 1 and {key: sent[0][key] for key in expected} == expected


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
