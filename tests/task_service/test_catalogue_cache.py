"""The task service's copy of the provider catalogues (task_service/catalogue.py), on a Redis of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis import Redis

from devstack.stack import LoneRedis
from task_service.catalogue import CatalogueCache
from tests.conftest import emptied
from tests.dispatcher_service.test_providers import publish

REDIS_DB = 14


@pytest.fixture
def redis(redis_server: LoneRedis) -> Iterator[Redis]:
    with emptied(redis_server, REDIS_DB) as client:
        yield client


def models(cache: CatalogueCache, provider: str) -> list[str]:
    return [model.name for model in asyncio.run(cache.current(provider))[provider].models]


def test_a_catalogue_redis_forgot_still_validates_creates_until_its_provider_publishes_again(redis: Redis) -> None:
    cache = CatalogueCache(redis, refresh_seconds=60)
    publish(redis, "openai", "gpt-4o")
    publish(redis, "volcengine", "seedream")
    asyncio.run(cache.refresh())
    redis.flushdb()  # Redis restarted without its data; openai published again first
    publish(redis, "openai", "gpt-4o")
    asyncio.run(cache.refresh())
    assert models(cache, "volcengine") == ["seedream"]
    publish(redis, "volcengine", "seedance")
    asyncio.run(cache.refresh())
    assert models(cache, "volcengine") == ["seedance"]
