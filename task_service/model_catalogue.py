"""ListModels: the live catalogue, built from the same provider catalogues creates are validated against,
with each provider's live instance count from the registry."""

from __future__ import annotations

import asyncio
from collections import Counter

from aitask.provider.v1 import provider_service_pb2
from aitask.v1 import task_service_pb2 as pb
from aitask_common.prices import price_document
from aitask_common.registry import read_instances
from aitask_common.tasks import TaskType
from task_service.catalogue import CatalogueCache
from task_service.validation import Catalogues, InvalidRequest


def validate_model_type(model_type: str) -> str:
    """An empty filter (every type) or one of the task types; else an error naming the allowed values."""
    if model_type and model_type not in TaskType.__members__.values():
        raise InvalidRequest("type", f"must be one of {', '.join(TaskType)} (got {model_type!r})")
    return model_type


async def list_models(
    cache: CatalogueCache, model_type: str, fallbacks: dict[str, list[str]] | None = None
) -> pb.ModelList:
    """Every published model (of `model_type`, unless empty), by provider then model name. The catalogues
    are the cache's (re-read if it holds none yet); the instance counts are read now, so a provider that
    stopped shows at once. Raises InvalidRequest for a bad type, RedisError when the registry is down."""
    validate_model_type(model_type)
    if not cache.catalogues:
        await cache.refresh()
    instances = await asyncio.to_thread(read_instances, cache.redis)
    live = Counter(instance.provider for instance in instances)
    return pb.ModelList(models=catalogue_models(cache.catalogues, live, model_type, fallbacks))


def catalogue_models(
    catalogues: Catalogues,
    live: Counter[str],
    model_type: str = "",
    fallbacks: dict[str, list[str]] | None = None,
) -> list[pb.CatalogueModel]:
    """The public entries of `catalogues`, given each provider's live instance count and the configured fallbacks."""
    fallbacks = fallbacks or {}
    return [
        _public_entry(provider, model, live[provider], fallbacks.get(f"{provider}/{model.name}", []))
        for provider in sorted(catalogues)
        for model in sorted(catalogues[provider].models, key=lambda model: model.name)
        if not model_type or model.task_type == model_type
    ]


def _public_entry(
    provider: str, model: provider_service_pb2.Model, live_instances: int, fallbacks: list[str]
) -> pb.CatalogueModel:
    return pb.CatalogueModel(
        provider=provider,
        model=model.name,
        type=model.task_type,
        asynchronous=model.asynchronous,
        sizes=model.sizes,
        aspect_ratios=model.aspect_ratios,
        default_size=model.default_size,
        default_aspect_ratio=model.default_aspect_ratio,
        max_tokens_limit=model.max_tokens_limit,
        temperature_min=model.temperature_min,
        temperature_max=model.temperature_max,
        accepts_seed=model.accepts_seed,
        response_formats=model.response_formats,
        max_prompt_chars=model.max_prompt_chars,
        note=model.note,
        live_instances=live_instances,
        available=live_instances > 0 and not model.retired,
        served_model=model.upstream_model or model.name,
        alternative=model.alternative,
        fallbacks=fallbacks,
        price=pb.ModelPrice(**price_document(model.price)),
    )
