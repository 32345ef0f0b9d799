"""Opt-in fallback: which catalogue model a task may run on instead of its own, and its parameters there.

A create that sets `allow_fallback` lets the dispatcher run the task on one of the model's fallbacks
(`MODEL_FALLBACKS`, shown in ListModels) when the model's circuit breaker is open or its retries are spent on
retryable errors. Only a fallback of the same modality, synchronous, and able to take the task's parameters is
used: a size is mapped to the fallback's size of the same aspect ratio (the largest, when several), a seed the
fallback does not accept is dropped, and anything else it cannot take (a size of no aspect ratio it offers, a
response format, max_tokens or temperature outside its range) skips it. The task then records the fallback as
`served_provider` / `served_model`.
"""

from __future__ import annotations

from aitask.provider.v1 import provider_service_pb2
from aitask_common.tasks import TaskParameters

# Two sizes share an aspect ratio when their ratios differ by less than this (341x512 is 2:3).
ASPECT_TOLERANCE = 0.01


def split_model_key(key: str) -> tuple[str, str]:
    """("provider", "model") of a "provider/model" key."""
    provider, _, model = key.partition("/")
    return provider, model


def _ratio(size: str) -> float | None:
    width, _, height = size.partition("x")
    try:
        return int(width) / int(height)
    except (ValueError, ZeroDivisionError):
        return None


def _pixels(size: str) -> int:
    width, _, height = size.partition("x")
    return int(width) * int(height)


def map_size(size: str, fallback: provider_service_pb2.Model) -> str | None:
    """The fallback's size for `size`: the same, else the largest of the same aspect ratio; None if none."""
    if not size or not fallback.sizes or size in fallback.sizes:
        return size
    ratio = _ratio(size)
    if ratio is None:
        return None
    same = [
        offered
        for offered in fallback.sizes
        if (offered_ratio := _ratio(offered)) is not None and abs(offered_ratio - ratio) < ASPECT_TOLERANCE
    ]
    return max(same, key=_pixels) if same else None


def map_parameters(
    parameters: TaskParameters, task_type: str, fallback: provider_service_pb2.Model
) -> TaskParameters | None:
    """The task's parameters as the fallback takes them, or None when it cannot take them (or is not a
    synchronous model of the same modality that is still served)."""
    if fallback.task_type != task_type or fallback.asynchronous or fallback.retired:
        return None
    mapped: TaskParameters = dict(parameters)  # type: ignore[assignment]
    if "size" in parameters:
        size = map_size(parameters["size"], fallback)
        if size is None:
            return None
        mapped["size"] = size
    response_format = parameters.get("response_format")
    if response_format and fallback.response_formats and response_format not in fallback.response_formats:
        return None
    if "seed" in parameters and not fallback.accepts_seed:
        del mapped["seed"]  # a seed only makes a result repeatable: the fallback's own result is still one
    max_tokens = parameters.get("max_tokens")
    if max_tokens is not None and fallback.max_tokens_limit and max_tokens > fallback.max_tokens_limit:
        return None
    temperature = parameters.get("temperature")
    if (
        temperature is not None
        and fallback.temperature_max
        and not (fallback.temperature_min <= temperature <= fallback.temperature_max)
    ):
        return None
    return mapped
