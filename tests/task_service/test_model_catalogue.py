"""ListModels' entries, from catalogues as the registry holds them: sorted, filtered, with availability."""

from __future__ import annotations

from collections import Counter

import pytest

from aitask.provider.v1 import provider_service_pb2 as provider_pb
from task_service.model_catalogue import catalogue_models, validate_model_type
from task_service.validation import InvalidRequest

CATALOGUES = {
    "zeta": provider_pb.DescribeCatalogueResponse(
        provider="zeta", models=[provider_pb.Model(name="z-text", task_type="text", max_tokens_limit=100)]
    ),
    "alpha": provider_pb.DescribeCatalogueResponse(
        provider="alpha",
        models=[
            provider_pb.Model(name="b-video", task_type="video", asynchronous=True, aspect_ratios=["16:9"]),
            provider_pb.Model(name="a-image", task_type="image", sizes=["1x1"], upstream_model="a-image-2"),
            provider_pb.Model(name="old", task_type="video", retired=True, alternative="zeta/z-video"),
        ],
    ),
}


def test_sorted_by_provider_then_model_with_availability() -> None:
    models = catalogue_models(CATALOGUES, Counter({"alpha": 2}))
    assert [(m.provider, m.model) for m in models] == [
        ("alpha", "a-image"),
        ("alpha", "b-video"),
        ("alpha", "old"),
        ("zeta", "z-text"),
    ]
    image, video, retired, text = models
    assert (image.live_instances, image.available, image.served_model) == (2, True, "a-image-2")
    assert (video.served_model, list(video.aspect_ratios), video.asynchronous) == ("b-video", ["16:9"], True)
    # Retired: listed with its alternative, never available; no instance: not available either.
    assert (retired.available, retired.alternative) == (False, "zeta/z-video")
    assert (text.live_instances, text.available, text.max_tokens_limit) == (0, False, 100)


def test_the_type_filter() -> None:
    assert [m.model for m in catalogue_models(CATALOGUES, Counter(), "video")] == ["b-video", "old"]
    assert validate_model_type("") == "" and validate_model_type("text") == "text"
    with pytest.raises(InvalidRequest, match=r"^type: must be one of image, video, text \(got 'audio'\)$"):
        validate_model_type("audio")
