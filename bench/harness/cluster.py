"""Issue 25's bench line: e2e_image on one Redis (with a replica), then on a Redis Cluster of 3 masters (and 3
replicas) with QUEUE_SHARDS=3, in one run, with each Redis node's CPU from INFO (used_cpu_sys + used_cpu_user), its
command time (INFO commandstats' usec) and its calls.

On 2 cores the total rate cannot grow; what sharding buys is each master's share of the work, which should fall by
about the shard count: `busiest_master_share` is the busiest master's Redis CPU per task over the lone Redis's, and
`busiest_master_command_share` and `busiest_master_calls_share` the same for command time and calls.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from redis import Redis

from aitask_common.queue_shards import QueueShards, configured
from bench.harness.scenarios import E2E_WORKERS, Bench, _line, prompt, run_e2e, say
from bench.harness.stack import BenchStack
from devstack.redis_cluster import RedisClusterServers
from devstack.stack import LoneRedis

SHARDS = 3


def redis_cpu(nodes: dict[str, Redis]) -> dict[str, dict[str, Any]]:
    """Each node's CPU (and of it, the kernel's) and command time so far, in seconds, the reads it served (a read
    event: about one round trip, however many commands it carries), and its calls of each command."""
    readings = {}
    for name, node in nodes.items():
        cpu = node.info("cpu")
        commands = node.info("commandstats")
        readings[name] = {
            "cpu_s": cpu["used_cpu_sys"] + cpu["used_cpu_user"],
            "sys_cpu_s": cpu["used_cpu_sys"],
            "reads": int(node.info("stats")["total_reads_processed"]),
            "command_s": sum(int(values["usec"]) for values in commands.values()) / 1e6,
            "calls": {command.removeprefix("cmdstat_"): int(values["calls"]) for command, values in commands.items()},
        }
    return readings


def measured(bench: Bench, stack: BenchStack, nodes: dict[str, Redis], tag: str) -> dict[str, Any]:
    """e2e_image on `stack`, with what it cost each Redis node per completed task: CPU and command time (ms), and
    the commands it ran most (calls)."""
    before = redis_cpu(nodes)
    entry = run_e2e(bench, stack, prompt(tag), bench.plan.e2e_tasks)
    after = redis_cpu(nodes)
    completed = max(entry["completed"], 1)
    per_task: dict[str, dict[str, Any]] = {}
    for name in nodes:
        calls = {
            command: (count - before[name]["calls"].get(command, 0)) / completed
            for command, count in after[name]["calls"].items()
        }
        top = sorted(calls.items(), key=lambda call: -call[1])[:8]
        per_task[name] = {
            "cpu_s": round((after[name]["cpu_s"] - before[name]["cpu_s"]) * 1000 / completed, 3),
            "command_s": round((after[name]["command_s"] - before[name]["command_s"]) * 1000 / completed, 3),
            "sys_cpu_s": round((after[name]["sys_cpu_s"] - before[name]["sys_cpu_s"]) * 1000 / completed, 3),
            "calls": round(sum(calls.values()), 1),
            "reads": round((after[name]["reads"] - before[name]["reads"]) / completed, 1),
            "top_calls": {command: round(count, 2) for command, count in top},
        }
    entry["redis_ms_per_task"] = per_task
    say(f"    {_line(entry)}; Redis per task: {per_task}")
    return entry


def replicated(master: Redis, replica: Redis, master_port: int) -> None:
    """Make `replica` the master's replica, as each master of the cluster has one: both sides of the comparison pay
    for sending every write on."""
    replica.replicaof("127.0.0.1", master_port)
    deadline = time.monotonic() + 30
    while (
        replica.info("replication").get("master_link_status") != "up"
        or not master.info("replication")["connected_slaves"]
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the lone Redis's replica never caught up")
        time.sleep(0.1)


def cluster_group(bench: Bench, selected: set[str]) -> None:
    del selected  # one scenario
    runs: dict[str, dict[str, Any]] = {}
    say(f"  cluster: e2e_image, {bench.plan.e2e_tasks} tasks, on one Redis with a replica")
    with (
        BenchStack("one-redis", workers=E2E_WORKERS) as stack,
        LoneRedis(Path(tempfile.mkdtemp(prefix="aitask-bench-replica-"))) as replica,
    ):
        replicated(stack.redis(), replica.redis(), stack.ports.redis)
        runs["one_redis"] = measured(bench, stack, {"redis": stack.redis()}, "cluster_one_redis")
    say(f"  cluster: e2e_image, {bench.plan.e2e_tasks} tasks, on 3 masters and 3 replicas, QUEUE_SHARDS={SHARDS}")
    with RedisClusterServers(Path(tempfile.mkdtemp(prefix="aitask-bench-cluster-"))) as servers:
        env = {"REDIS_CLUSTER_URLS": ",".join(servers.urls), "QUEUE_SHARDS": str(SHARDS)}
        with (
            configured(QueueShards.layout(SHARDS, cluster=True)),
            BenchStack("cluster", workers=E2E_WORKERS, env=env) as stack,
        ):
            masters = {f"master:{port}": Redis(port=port) for port in servers.masters()}
            runs["cluster"] = measured(bench, stack, masters, "cluster_three_shards")
    lone = runs["one_redis"]["redis_ms_per_task"]["redis"]
    masters = runs["cluster"]["redis_ms_per_task"].values()

    def busiest_share(what: str) -> float | None:
        return round(max(node[what] for node in masters) / lone[what], 3) if lone[what] else None

    cluster = runs["cluster"]
    bench.results["cluster"] = (
        runs
        | {key: cluster[key] for key in ("throughput_per_s", "p50_ms", "p95_ms", "p99_ms", "errors")}
        | {
            "ratio_to_floor": round(cluster["throughput_per_s"] / runs["one_redis"]["throughput_per_s"], 3),
            "busiest_master_share": busiest_share("cpu_s"),
            "busiest_master_command_share": busiest_share("command_s"),
            "busiest_master_calls_share": busiest_share("calls"),
            "busiest_master_reads_share": busiest_share("reads"),
        }
    )
