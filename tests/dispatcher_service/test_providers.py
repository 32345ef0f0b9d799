"""The dispatcher's view of the provider registry (dispatcher_service/providers.py), on a Redis of its own."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import json_format
from redis import Redis

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.registry import CATALOGUES_KEY, INDEX_KEY, ProviderInstance
from devstack.processes import free_port
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


def register(redis: Redis, instance: ProviderInstance) -> None:
    """What a provider's registry heartbeat writes for its instance."""
    redis.set(instance.key, instance.to_json())
    redis.sadd(INDEX_KEY, instance.key)


def state_of(channel: grpc.Channel) -> grpc.ChannelConnectivity:
    """The channel's connectivity now, read without asking it to connect."""
    states: queue.Queue[grpc.ChannelConnectivity] = queue.Queue()
    channel.subscribe(states.put, try_to_connect=False)
    try:
        return states.get(timeout=2)
    finally:
        channel.unsubscribe(states.put)


def test_connect_opens_a_channel_to_each_live_instance_and_waits_no_longer_than_its_timeout(redis: Redis) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    live = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        gone = f"127.0.0.1:{free_port()}"  # registered, but nothing listens there
        for instance_id, address in (("live", live), ("gone", gone)):
            register(redis, ProviderInstance("echo", instance_id, address, pb.DescribeCatalogueResponse()))
        directory = ProviderDirectory(redis, cache_seconds=3600)
        started = time.monotonic()
        directory.connect(timeout=1.0)
        assert time.monotonic() - started < 3.0
        # The live instance's channel is connected already; the other's is not, and is used (and retried) as before.
        assert state_of(directory._channel(live)) == grpc.ChannelConnectivity.READY
        assert state_of(directory._channel(gone)) != grpc.ChannelConnectivity.READY
    finally:
        server.stop(grace=None)


def test_connect_without_redis_leaves_every_channel_to_first_use() -> None:
    unreachable = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    directory = ProviderDirectory(unreachable, cache_seconds=3600)
    directory.connect(timeout=1.0)  # no registry to read: nothing to connect, and no error
    assert directory._channels == {}
