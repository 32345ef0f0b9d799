"""The sync Redis Cluster client RQ and our MULTIs run on (REDIS_CLUSTER_URLS).

redis-py's cluster pipelines are not transactions unless asked, refuse `multi()` otherwise, lack the
`explicit_transaction` RQ reads, and refuse scripts. Here a pipeline is a MULTI unless told otherwise, as on a
single Redis: RQ's bookkeeping and our own MULTIs stay atomic, and one whose keys span slots fails
(CrossSlotTransactionError, which is not a RedisError: a programming error, not an outage) instead of running
without its atomicity. Keys meant to meet share a hash tag (aitask_common.queue_shards).
"""

from __future__ import annotations

from typing import Any

from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster


class AtomicClusterPipeline(ClusterPipeline):
    @property
    def explicit_transaction(self) -> bool:
        """Whether `multi()` was called (RQ checks before calling it)."""
        return bool(getattr(self._execution_strategy, "_explicit_transaction", False))

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        """Queue a script with its body (EVAL): redis-py blocks scripts in cluster pipelines, and an EVALSHA of a
        script the node has not loaded would fail inside the MULTI."""
        return self.execute_command("EVAL", script, numkeys, *keys_and_args)  # type: ignore[no-untyped-call]


class ClusterClient(RedisCluster):
    """A RedisCluster whose pipelines are transactions by default."""

    def pipeline(self, transaction: bool | None = True, shard_hint: Any = None) -> AtomicClusterPipeline:
        if shard_hint:
            raise ValueError("shard_hint has no meaning on a cluster")
        return AtomicClusterPipeline(
            nodes_manager=self.nodes_manager,
            commands_parser=self.commands_parser,
            startup_nodes=self.nodes_manager.startup_nodes,  # type: ignore[arg-type]  # as RedisCluster passes it
            result_callbacks=self.result_callbacks,
            cluster_response_callbacks=self.cluster_response_callbacks,
            read_from_replicas=self.read_from_replicas,
            load_balancing_strategy=self.load_balancing_strategy,
            reinitialize_steps=self.reinitialize_steps,
            retry=self.retry,
            lock=self._lock,
            transaction=transaction,
            event_dispatcher=self._event_dispatcher,
        )


def startup_nodes(urls: str) -> list[ClusterNode]:
    """The nodes of a comma-separated list of `redis://host:port` URLs (REDIS_CLUSTER_URLS)."""
    nodes = []
    for url in (part.strip() for part in urls.split(",")):
        if not url:
            continue
        address = url.removeprefix("redis://").split("/", 1)[0]
        host, separator, port = address.rpartition(":")
        if not separator or not port.isdigit():
            raise ValueError(f"REDIS_CLUSTER_URLS: {url!r} is not redis://host:port")
        nodes.append(ClusterNode(host, int(port)))  # type: ignore[no-untyped-call]  # unannotated in redis-py
    if not nodes:
        raise ValueError("REDIS_CLUSTER_URLS names no node")
    return nodes


def cluster_client(urls: str, socket_timeout: float, **options: Any) -> ClusterClient:
    """A client of the cluster the URLs' nodes belong to (any one live node is enough to find the others)."""
    return ClusterClient(startup_nodes=startup_nodes(urls), socket_timeout=socket_timeout, **options)
