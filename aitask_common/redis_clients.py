"""The Redis clients of every process, made from the settings: one Redis (REDIS_URL) or a Redis Cluster
(REDIS_CLUSTER_URLS). Code takes a client and does not ask which: keys that must meet share a hash tag
(aitask_common.queue_shards), and RQ reaches a shard through `rq_connection`.

A cluster client is typed as the plain one it stands in for: it offers the same commands.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aitask_common.queue_shards import layout
from aitask_common.redis_async import async_redis
from aitask_common.redis_cluster import ClusterClient, cluster_client, startup_nodes
from aitask_common.settings import ServiceSettings

# What Redis going away raises (a cluster's failover too: aitask_common.redis_cluster.ClusterUnavailable).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)


def redis_client(settings: ServiceSettings, **options: Any) -> Redis:
    """A synchronous client for every key (on a cluster, commands go to the node of their key's slot)."""
    timeout = options.pop("socket_timeout", settings.redis_socket_timeout)
    if settings.redis_cluster_urls:
        return cast(Redis, cluster_client(settings.redis_cluster_urls, timeout, **options))
    return Redis.from_url(settings.redis_url, socket_timeout=timeout, **options)


def async_redis_client(settings: ServiceSettings, **options: Any) -> AsyncRedis:
    """An asyncio client for every key; its pooled connections survive a Redis restart (aitask_common.redis_async)."""
    if not settings.redis_cluster_urls:
        return async_redis(settings.redis_url, settings.redis_socket_timeout, **options)
    nodes = [AsyncClusterNode(node.host, node.port) for node in startup_nodes(settings.redis_cluster_urls)]
    cluster = AsyncRedisCluster(startup_nodes=nodes, socket_timeout=settings.redis_socket_timeout, **options)
    return cast(AsyncRedis, cluster)


def events_redis(settings: ServiceSettings, **options: Any) -> AsyncRedis:
    """An asyncio client for pub/sub: a cluster's nodes pass every message on to each other, so one node will do
    (the first of REDIS_CLUSTER_URLS)."""
    if not settings.redis_cluster_urls:
        return AsyncRedis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout, **options)
    node = startup_nodes(settings.redis_cluster_urls)[0]
    return AsyncRedis(host=node.host, port=node.port, socket_timeout=settings.redis_socket_timeout, **options)


def rq_connection(connection: Redis, shard: int) -> Redis:
    """The client RQ runs on for `shard`: `connection` itself on one Redis; on a cluster, a plain client of the
    master serving the shard's slot (made once per cluster client and shard)."""
    if not isinstance(connection, ClusterClient):
        return connection
    return connection.rq_client(layout().tag(shard))


def wait_for_redis(
    connection: Redis,
    stopping: Callable[[], bool],
    first_delay: float,
    longest_delay: float,
    while_waiting: Callable[[], None] = lambda: None,
) -> float | None:
    """Ping `connection` until it answers, `first_delay` seconds after the call and then twice as long after each
    failure (at most `longest_delay`), calling `while_waiting` before each sleep; the seconds waited, or None when
    `stopping()` came first."""
    started = time.monotonic()
    delay = first_delay
    while not stopping():
        while_waiting()
        time.sleep(delay)
        try:
            connection.ping()
            return time.monotonic() - started
        except REDIS_DOWN:
            delay = min(delay * 2, longest_delay)
    return None
