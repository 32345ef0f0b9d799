"""A real Redis Cluster on loopback: 3 masters and 3 replicas of Debian's redis-server, joined by
`redis-cli --cluster create`; for the tests and benches that run aitask on a cluster.

`with RedisClusterServers(data_dir) as cluster:` starts the six servers, creates the cluster and waits until
every node reports `cluster_state:ok`; `cluster.kill(port)` SIGKILLs one (a master, for a failover).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from devstack.processes import ROOT, accepts, free_port, redis_server_argv

MASTERS = 3
REPLICAS_PER_MASTER = 1
STARTUP_SECONDS = 60.0
# How soon a replica declares its master failed and takes over: short, so failover tests take seconds.
NODE_TIMEOUT_MS = 2000


def cluster_node_argv(port: int, bus_port: int, data_dir: Path) -> list[str]:
    """A cluster-enabled redis-server on 127.0.0.1:`port` (its cluster bus on `bus_port`: the default, port + 10000,
    may be taken), its append-only file and nodes.conf in `data_dir`."""
    return redis_server_argv(
        port,
        data_dir,
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        str(bus_port),
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
    )


class RedisClusterServers:
    """Six redis-servers in cluster mode on free loopback ports, made one cluster."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        taken: list[int] = []
        for _ in range(2 * MASTERS * (1 + REPLICAS_PER_MASTER)):
            taken.append(free_port(avoid=taken))
        self.ports, self.bus_ports = taken[::2], taken[1::2]
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def urls(self) -> list[str]:
        """Every node's URL: what REDIS_CLUSTER_URLS takes (any one would do; more survive a dead node)."""
        return [f"redis://127.0.0.1:{port}" for port in self.ports]

    def client(self) -> RedisCluster:
        nodes = [ClusterNode("127.0.0.1", port) for port in self.live_ports()]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes)

    def live_ports(self) -> list[int]:
        return [port for port, process in self._processes.items() if process.poll() is None]

    def masters(self) -> list[int]:
        """The ports of the nodes serving slots now (replicas promoted by a failover included)."""
        with self.client() as cluster:
            return sorted(node.port for node in cluster.get_primaries())

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no last write to its append-only file."""
        process = self._processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def move_slot(self, slot: int, to_port: int) -> None:
        """Move one hash slot, with its keys, to the master on `to_port` (as a resharding does, slot by slot)."""
        with self.client() as cluster:
            source_port = cluster.nodes_manager.get_node_from_slot(slot).port
        with Redis(port=source_port) as source, Redis(port=to_port) as target:
            source_id, target_id = source.execute_command("CLUSTER MYID"), target.execute_command("CLUSTER MYID")
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            others = [port for port in self.masters() if port not in (to_port, source_port)]
            for port in (to_port, source_port, *others):  # the new owner first, as the Redis docs ask
                with Redis(port=port) as master:
                    master.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)

    def wait_until_healthy(self, timeout: float = STARTUP_SECONDS) -> None:
        """Until every live node reports the cluster ok with all slots served (after a create or a failover)."""
        deadline = time.monotonic() + timeout
        while not all(self._node_ok(port) for port in self.live_ports()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not ok after {timeout:.0f} s:\n{self._logs()}")
            time.sleep(0.1)

    def __enter__(self) -> RedisClusterServers:
        for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
            node_dir = self.data_dir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            with (node_dir / "redis.log").open("ab") as log:
                self._processes[port] = subprocess.Popen(
                    cluster_node_argv(port, bus_port, node_dir),
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not all(accepts(port) for port in self.ports):
            if time.monotonic() > deadline or any(process.poll() is not None for process in self._processes.values()):
                self.__exit__()
                raise RuntimeError(f"redis-server (cluster mode) did not start:\n{self._logs()}")
            time.sleep(0.02)
        create = subprocess.run(
            [
                shutil.which("redis-cli") or "/usr/bin/redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                str(REPLICAS_PER_MASTER),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_SECONDS,
        )
        if create.returncode != 0:
            self.__exit__()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        try:
            self.wait_until_healthy()
        except RuntimeError:
            self.__exit__()  # no server outlives a cluster that never came up
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _node_ok(self, port: int) -> bool:
        try:
            with Redis(port=port, socket_timeout=1) as node:
                info = node.cluster("INFO")
        except RedisError:
            return False
        return info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == 16384

    def _logs(self) -> str:
        return "\n".join(
            f"--- {port}\n" + (self.data_dir / str(port) / "redis.log").read_text(errors="replace")[-1500:]
            for port in self.ports
            if (self.data_dir / str(port) / "redis.log").exists()
        )
