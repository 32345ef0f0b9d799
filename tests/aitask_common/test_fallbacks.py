"""How a task's parameters map to a fallback model (aitask_common/fallbacks.py): pure functions, no stack."""

from __future__ import annotations

import pytest

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.fallbacks import map_parameters, map_size, split_model_key
from aitask_common.tasks import TaskParameters

JIMENG = pb.Model(
    name="jimeng_high_aes_general_v21_L",
    task_type="image",
    sizes=["512x512", "512x384", "384x512", "512x341", "341x512", "512x288", "288x512"],
    response_formats=["url", "b64_json"],
    accepts_seed=True,
)


@pytest.mark.parametrize(
    ("size", "mapped"),
    [
        ("1024x1024", "512x512"),
        ("864x1152", "384x512"),
        ("1280x720", "512x288"),
        ("832x1248", "341x512"),
        ("512x384", "512x384"),
        ("1512x648", None),
        ("huge", None),
    ],
)
def test_a_size_maps_to_the_fallbacks_size_of_the_same_aspect_ratio(size: str, mapped: str | None) -> None:
    assert map_size(size, JIMENG) == mapped


def test_parameters_map_or_the_fallback_is_skipped() -> None:
    parameters: TaskParameters = {"priority": "default", "size": "1024x1024", "seed": 7, "response_format": "url"}
    assert map_parameters(parameters, "image", JIMENG) == parameters | {"size": "512x512"}
    assert map_parameters(parameters | {"size": "1512x648"}, "image", JIMENG) is None
    assert map_parameters(parameters, "video", JIMENG) is None  # another modality
    no_seed = pb.Model(task_type="image", sizes=["1024x1024"], response_formats=["b64_json"])
    assert map_parameters(parameters, "image", no_seed) is None  # no "url" answers there
    assert map_parameters(parameters | {"response_format": "b64_json"}, "image", no_seed) == {
        "priority": "default",
        "size": "1024x1024",
        "response_format": "b64_json",
    }
    text = pb.Model(task_type="text", max_tokens_limit=4096, temperature_min=0.0, temperature_max=1.0)
    assert map_parameters({"max_tokens": 8000}, "text", text) is None
    assert map_parameters({"temperature": 1.5}, "text", text) is None
    assert map_parameters({"max_tokens": 100, "temperature": 0.5}, "text", text) == {
        "max_tokens": 100,
        "temperature": 0.5,
    }
    assert map_parameters({}, "image", pb.Model(task_type="image", asynchronous=True)) is None


def test_model_keys_split_at_the_first_slash() -> None:
    assert split_model_key("volcengine/doubao-seedream-3-0-t2i-250415") == (
        "volcengine",
        "doubao-seedream-3-0-t2i-250415",
    )
