"""The dispatcher's view of the provider registry (dispatcher_service/providers.py), on a Redis of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import json_format
from redis import Redis

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.registry import CATALOGUES_KEY
from devstack.stack import LoneRedis
from dispatcher_service.providers import ProviderDirectory
from tests.conftest import emptied

REDIS_DB = 13


@pytest.fixture
def redis(redis_server: LoneRedis) -> Iterator[Redis]:
    with emptied(redis_server, REDIS_DB) as client:
        yield client


def publish(redis: Redis, provider: str, *models: str) -> None:
    """What a provider's registry heartbeat writes for its catalogue."""
    catalogue = pb.DescribeCatalogueResponse(models=[pb.Model(name=name) for name in models])
    redis.hset(CATALOGUES_KEY, provider, json_format.MessageToJson(catalogue, preserving_proto_field_name=True))


def test_a_model_published_after_the_cached_read_is_found_at_once(redis: Redis) -> None:
    directory = ProviderDirectory(redis, cache_seconds=3600)
    assert directory.model("echo", "echo-1") is None and not directory.has_catalogue("echo")
    publish(redis, "echo", "echo-1")
    model = directory.model("echo", "echo-1")
    assert model is not None and model.name == "echo-1"
    assert directory.has_catalogue("echo")
    publish(redis, "echo", "echo-1", "echo-2")
    assert directory.model("echo", "echo-2") is not None


def test_a_catalogue_redis_forgot_is_kept_until_its_provider_publishes_again(redis: Redis) -> None:
    directory = ProviderDirectory(redis, cache_seconds=0)
    publish(redis, "volcengine", "seedream")
    assert directory.model("volcengine", "seedream") is not None
    redis.flushdb()  # Redis restarted without its data
    assert directory.has_catalogue("volcengine")
    assert directory.model("volcengine", "seedream") is not None
    publish(redis, "volcengine", "seedance")  # the provider publishes again: its new catalogue wins
    assert directory.model("volcengine", "seedream") is None
    assert directory.model("volcengine", "seedance") is not None
