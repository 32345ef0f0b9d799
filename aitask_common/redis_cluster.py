"""Clients of a Redis Cluster (REDIS_CLUSTER_URLS): a shard's connection, for RQ and the shard's own keys, and a
cluster client for the rest.

A queue shard's keys all share one hash slot (aitask_common.queue_shards), so RQ runs on a plain client connected
to the master serving that slot: RQ's worker pool, scheduler, pipelines and scripts work as on a single Redis. The
master is looked up at each connect, so a failover (the old master unreachable) or a slot moved away (MOVED) is
followed by reconnecting.

For the other keys (users', providers', ...), a cluster client. redis-py's cluster pipelines are not transactions
unless asked, refuse `multi()` otherwise, and refuse scripts; here a pipeline is a MULTI unless told otherwise, as on
a single Redis, and runs scripts. One whose keys span slots fails (CrossSlotTransactionError, which is not a
RedisError: a programming error, not an outage) instead of running without its atomicity.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis._parsers.commands import CommandPolicies, RequestPolicy, ResponsePolicy
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.commands.policies import StaticPolicyResolver
from redis.connection import Connection, ConnectionPool
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import CrossSlotTransactionError, MovedError, RedisClusterException, RedisError


class ClusterUnavailable(RedisConnectionError):
    """The cluster cannot serve a command now (a failover under way leaves slots uncovered, no node answers):
    redis-py says so with RedisClusterException, which is no RedisError; this one is, so every caller that rides
    out a Redis outage rides out this one too."""


def _served(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except CrossSlotTransactionError:
        raise  # a bug in our keys, not an outage
    except RedisClusterException as error:
        raise ClusterUnavailable(str(error)) from error


_KEYED = CommandPolicies(request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED)


class KeyedScripts(StaticPolicyResolver):
    """redis-py's policies, plus: EVAL and EVALSHA go to their keys' node. Without a policy for them a pipeline that
    is not a transaction asks a node for each script's keys (COMMAND GETKEYS, a round trip per script, two per
    create) only to learn that it has keys; with one it reads them from the script's own arguments."""

    def resolve(self, command_name: str) -> CommandPolicies | None:
        if command_name in ("eval", "evalsha"):
            return _KEYED
        return super().resolve(command_name)


class AtomicClusterPipeline(ClusterPipeline):
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        """Queue a script with its body (EVAL): redis-py blocks scripts in cluster pipelines, and an EVALSHA of a
        script the node has not loaded would fail inside the MULTI."""
        return self.execute_command("EVAL", script, numkeys, *keys_and_args)  # type: ignore[no-untyped-call]

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        return _served(super().execute, raise_on_error)  # type: ignore[no-any-return]


class ClusterClient(RedisCluster):
    """A RedisCluster whose pipelines are transactions by default; it keeps the URLs and timeout it was made with
    (cluster_client), and the plain clients it made from them for queue shards."""

    urls: str = ""
    socket_timeout: float = 5.0
    rq_clients: dict[str, Redis]

    def rq_client(self, tag: str) -> Redis:
        """A plain client of the master serving `tag`'s slot, made once per tag: what a queue shard's RQ runs on."""
        if tag not in self.rq_clients:
            self.rq_clients[tag] = shard_client(self.urls, tag, self.socket_timeout)
        return self.rq_clients[tag]

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return _served(super().execute_command, *args, **kwargs)

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
            policy_resolver=self._policy_resolver,
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
    client = ClusterClient(
        startup_nodes=startup_nodes(urls), socket_timeout=socket_timeout, policy_resolver=KeyedScripts(), **options
    )
    client.urls, client.socket_timeout, client.rq_clients = urls, socket_timeout, {}
    return client


class SlotConnection(Connection):
    """A connection to the master serving `slot` now, found through any of `cluster_nodes` at each connect."""

    def __init__(self, *, cluster_nodes: tuple[tuple[str, int], ...], slot: int, **kwargs: Any) -> None:
        self.cluster_nodes = cluster_nodes
        self.slot = slot
        host, port = cluster_nodes[0]
        super().__init__(host=host, port=port, **kwargs)  # type: ignore[no-untyped-call]  # unannotated in redis-py

    def _connect(self) -> Any:
        self._host, self.port = slot_master(self.cluster_nodes, self.slot, self.socket_connect_timeout or 2.0)
        return super()._connect()  # type: ignore[no-untyped-call]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except MovedError as moved:
            # The slot moved to another master: a broken connection to the client, which reconnects (and looks the
            # slot up again) on its retry; a MULTI refused this way ran nothing, so retrying it is safe.
            self.disconnect()  # type: ignore[no-untyped-call]
            raise RedisConnectionError(f"slot {self.slot} moved: {moved}") from moved


def slot_master(nodes: tuple[tuple[str, int], ...], slot: int, timeout: float) -> tuple[str, int]:
    """The address of the master serving `slot`, asked of the first node that answers."""
    errors = []
    for host, port in nodes:
        try:
            with Redis(host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout) as node:
                ranges = node.execute_command("CLUSTER", "SLOTS")
        except RedisError as error:
            errors.append(f"{host}:{port}: {error}")
            continue
        for start, end, master, *_replicas in ranges:
            if start <= slot <= end:
                master_host = master[0].decode() if isinstance(master[0], bytes) else master[0]
                return master_host or host, int(master[1])
        errors.append(f"{host}:{port}: slot {slot} is not served")
    raise RedisConnectionError(f"no cluster node could say which master serves slot {slot}: {'; '.join(errors)}")


def shard_client(urls: str, tag: str, socket_timeout: float, **options: Any) -> Redis:
    """A plain client whose connections go to the master serving the hash slot of `tag` (a queue shard's)."""
    nodes = tuple((node.host, node.port) for node in startup_nodes(urls))
    pool = ConnectionPool(
        connection_class=SlotConnection,
        cluster_nodes=nodes,
        slot=key_slot(tag.encode()),
        socket_timeout=socket_timeout,
        **options,
    )
    return Redis(connection_pool=pool)
