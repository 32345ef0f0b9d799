"""The Redis clients of every process, made from the settings: one Redis (REDIS_URL) or a Redis Cluster
(REDIS_CLUSTER_URLS). Code takes a client and does not ask which: keys that must meet share a hash tag
(aitask_common.queue_shards), and RQ reaches a shard through `rq_connection`.

A cluster client is typed as the plain one it stands in for: it offers the same commands.
"""

from __future__ import annotations

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
