"""Unit tests of request validation against a catalogue (pure logic, no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitask.v1 import task_service_pb2 as pb
from aitask_common.provider import load_catalogue
from aitask_common.tasks import TaskType
from task_service.validation import InvalidRequest, is_task_id, validate_create

ROOT = Path(__file__).resolve().parents[2]
CATALOGUES = {
    "volcengine": load_catalogue(ROOT / "provider_volcengine" / "catalogue.toml"),
    "openai": load_catalogue(ROOT / "provider_openai" / "catalogue.toml"),
}


def image(**fields: object) -> pb.CreateImageTaskRequest:
    base = {"prompt": "a cat", "user_id": "u1", "provider": "volcengine", "model": "doubao-seedream-3-0-t2i-250415"}
    return pb.CreateImageTaskRequest(**{**base, **fields})


def test_defaults_are_filled_from_the_catalogue() -> None:
    valid = validate_create(TaskType.IMAGE, image(), CATALOGUES, 4000)
    assert valid.parameters == {"priority": "default", "size": "1024x1024", "response_format": "url"}
    assert valid.prompt == "a cat"


def test_prompt_is_trimmed_and_seed_kept() -> None:
    valid = validate_create(TaskType.IMAGE, image(prompt="  a dog  ", seed=-1), CATALOGUES, 4000)
    assert valid.prompt == "a dog" and valid.parameters["seed"] == -1


@pytest.mark.parametrize(
    ("request_", "task_type", "field"),
    [
        (image(seed=-2), TaskType.IMAGE, "seed"),
        (image(user_id="bad user"), TaskType.IMAGE, "user_id"),
        (image(user_id="u1\n"), TaskType.IMAGE, "user_id"),
        (image(prompt="a\x00cat"), TaskType.IMAGE, "prompt"),
        (image(prompt="a\x1b[31mcat"), TaskType.IMAGE, "prompt"),
        (image(model="jimeng_vgfm_t2v_l20"), TaskType.IMAGE, "model"),
        (
            pb.CreateVideoTaskRequest(
                prompt="p", user_id="u", provider="volcengine", model="jimeng_vgfm_t2v_l20", aspect_ratio="2:1"
            ),
            TaskType.VIDEO,
            "aspect_ratio",
        ),
        (
            pb.CreateTextTaskRequest(
                prompt="p", user_id="u", provider="volcengine", model="doubao-pro-4k", max_tokens=0
            ),
            TaskType.TEXT,
            "max_tokens",
        ),
        (
            pb.CreateTextTaskRequest(prompt="p", user_id="u", provider="openai", model="gpt-4", temperature=2.5),
            TaskType.TEXT,
            "temperature",
        ),
        (
            pb.CreateTextTaskRequest(prompt="p" * 200, user_id="u", provider="openai", model="gpt-4"),
            TaskType.TEXT,
            "prompt",
        ),
    ],
)
def test_rejections_name_the_field(request_: object, task_type: TaskType, field: str) -> None:
    limit = 100
    with pytest.raises(InvalidRequest) as error:
        validate_create(task_type, request_, CATALOGUES, limit)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")


def test_text_options_are_kept_only_when_set() -> None:
    request = pb.CreateTextTaskRequest(prompt="hi", user_id="u", provider="openai", model="gpt-4", temperature=0.0)
    valid = validate_create(TaskType.TEXT, request, CATALOGUES, 4000)
    assert valid.parameters == {"priority": "default", "temperature": 0.0}


def test_prompts_keep_tabs_and_newlines() -> None:
    assert validate_create(TaskType.IMAGE, image(prompt="a cat\n\tin a hat\r\n"), CATALOGUES, 4000).prompt == (
        "a cat\n\tin a hat"
    )


@pytest.mark.parametrize(
    ("task_id", "expected"),
    [
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV", True),
        ("01arz3ndektsv4rrffq69g5fav", False),
        ("01ARZ3NDEKTSV4RRFFQ69G5FA", False),
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV\n", False),
        ("01ARZ3NDEKTSV4RRFFQ69G5FAI", False),
        ("\x00", False),
    ],
)
def test_task_id_shape(task_id: str, expected: bool) -> None:
    assert is_task_id(task_id) is expected


@pytest.mark.parametrize(("model", "served"), [("gpt-4", "gpt-5.5"), ("gpt-5.5", "gpt-5.5")])
def test_an_alias_records_the_model_that_serves_it(model: str, served: str) -> None:
    request = pb.CreateTextTaskRequest(prompt="hi", user_id="u", provider="openai", model=model)
    valid = validate_create(TaskType.TEXT, request, CATALOGUES, 4000)
    assert (valid.model, valid.served_model) == (model, served)


def test_an_alias_takes_its_successors_parameters() -> None:
    dalle = image(provider="openai", model="dall-e-3")
    valid = validate_create(TaskType.IMAGE, dalle, CATALOGUES, 4000)
    # The successor answers base64 only: that is the default, and "url" is refused naming what is allowed.
    assert valid.served_model == "gpt-image-2.5-sunburst" and valid.parameters["response_format"] == "b64_json"
    with pytest.raises(
        InvalidRequest, match=r"response_format: 'url' is not allowed for dall-e-3 \(allowed: b64_json\)"
    ):
        validate_create(
            TaskType.IMAGE, image(provider="openai", model="dall-e-3", response_format="url"), CATALOGUES, 4000
        )
    with pytest.raises(InvalidRequest, match="size: '1792x1024' is not allowed"):
        validate_create(TaskType.IMAGE, image(provider="openai", model="dall-e-3", size="1792x1024"), CATALOGUES, 4000)


@pytest.mark.parametrize("model", ["sora", "sora-2"])
def test_a_retired_model_is_refused_naming_the_alternative(model: str) -> None:
    request = pb.CreateVideoTaskRequest(prompt="a cat", user_id="u", provider="openai", model=model)
    with pytest.raises(InvalidRequest) as error:
        validate_create(TaskType.VIDEO, request, CATALOGUES, 4000)
    assert error.value.field == "model"
    assert f"'{model}' was retired by the vendor" in str(error.value)
    assert str(error.value).endswith("use volcengine/jimeng_vgfm_t2v_l20 instead")
