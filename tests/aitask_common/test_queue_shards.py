"""Queue shards on a real Redis Cluster (3 masters, 3 replicas on loopback): each shard is a whole RQ namespace in
one hash slot, RQ's MULTIs stay transactions there, and the shards land on different masters."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis import Redis
from redis.crc import key_slot
from redis.exceptions import CrossSlotTransactionError, RedisError
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from aitask_common import fair_share, queue_shards
from aitask_common.breaker_state import BreakerState, breaker_statuses, reset_breaker
from aitask_common.queue_shards import QueueShards, configured, priority_of, shard_of_key
from aitask_common.queues import watch_key
from aitask_common.redis_cluster import ClusterClient, cluster_client, shard_client, startup_nodes
from aitask_common.rq_shards import ShardWorker, shard_queue_class, shard_worker_class
from aitask_common.settings import load_settings
from devstack.redis_cluster import RedisClusterServers
from dispatcher_service.breakers import Breakers
from dispatcher_service.settings import DispatcherSettings
from tests.conftest import wait_until

SHARDS = QueueShards.layout(3, cluster=True)
PRIORITIES = ("critical", "default", "low")
WATCH = "aitask:{tag}:watch"


class ShardTestWorker(ShardWorker, SimpleWorker):
    """A plain RQ worker of one shard (the dispatcher's adds its own; dispatcher_service/worker.py)."""


def double(value: int) -> int:
    """The job the shard workers below run."""
    return value * 2


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> Iterator[ClusterClient]:
    client = cluster_client(",".join(redis_cluster.urls), socket_timeout=30)
    client.flushall()
    yield client
    client.flushall()
    client.close()


def shard_clients(servers: RedisClusterServers, shards: QueueShards) -> dict[int, Redis]:
    """Each shard's plain client, on the master serving its slot (what RQ runs on)."""
    return {shard: shard_client(",".join(servers.urls), shards.tag(shard), 30) for shard in shards.shards()}


def enqueue(clients: dict[int, Redis], shards: QueueShards, task_ids: list[str]) -> dict[str, str]:
    """Each task's job in its shard's default queue, with a watch entry, in one MULTI per shard (as a create
    batch would), and one job per shard due a second ago through RQ's scheduler; returns id -> job id."""
    jobs: dict[str, str] = {}
    for shard, client in clients.items():
        tag = shards.tag(shard)
        queue = shard_queue_class(tag)(
            shards.queue_name("default", shard), connection=client, serializer=JSONSerializer
        )
        with client.pipeline() as pipe:
            pipe.multi()
            for task_id in (task for task in task_ids if shards.shard_of(task) == shard):
                job = queue.enqueue(
                    f"{__name__}.double", len(task_id), job_id=shards.new_job_id(shard), pipeline=pipe, result_ttl=300
                )
                pipe.zadd(WATCH.format(tag=tag), {task_id: 0})
                jobs[task_id] = job.id
            pipe.execute()
        delayed = queue.enqueue_at(
            datetime.now(UTC) - timedelta(seconds=1), f"{__name__}.double", 1, job_id=shards.new_job_id(shard)
        )
        jobs[f"delayed-{shard}"] = delayed.id
    return jobs


def drain(client: Redis, shards: QueueShards, shard: int) -> None:
    """One burst worker of the shard, with RQ's scheduler, runs every job waiting or due in its queues."""
    tag = shards.tag(shard)
    queue_class = shard_queue_class(tag)
    queues = [
        queue_class(shards.queue_name(priority, shard), connection=client, serializer=JSONSerializer)
        for priority in PRIORITIES
    ]
    worker = shard_worker_class(ShardTestWorker, tag)(
        queues, connection=client, serializer=JSONSerializer, name=f"{tag}worker-{uuid.uuid4().hex[:8]}"
    )
    worker.work(burst=True, with_scheduler=True)


def assert_all_finished(client: Redis, job_ids: Iterable[str]) -> None:
    statuses = {
        job_id: Job.fetch(job_id, connection=client, serializer=JSONSerializer).get_status() for job_id in job_ids
    }
    assert set(statuses.values()) == {JobStatus.FINISHED}, statuses


def test_rq_takes_a_shard_tag_at_the_head_of_a_job_id_and_nothing_else_it_forbids() -> None:
    # RQ 2.12 checks ids only through rq.job.validate_job_id: this pins that the shard tag passes and the rest of
    # RQ's rule still holds.
    assert Job(id="{q2}0f3a", connection=Redis()).id == "{q2}0f3a"
    for bad in ("{q2}a b", "x{q2}a", "{a}b", "a:b"):
        with pytest.raises(ValueError, match="Job ID must only contain"):
            Job(id=bad, connection=Redis())
    # The scheduler's own hash goes under its queues' tag (it shares a MULTI with their locks); RQ's name otherwise.
    assert RQScheduler(["{q2}default", "{q2}low"], connection=Redis(), name="s").key == "rq:scheduler:{q2}s"
    assert RQScheduler(["default"], connection=Redis(), name="s").key == "rq:scheduler:s"


def test_without_sharding_keys_are_rqs_own() -> None:
    single = QueueShards.layout(1, cluster=False)
    assert single.tag(0) == ""
    assert single.queue_name("default", 0) == "default"
    assert "{" not in single.new_job_id(0)
    assert shard_queue_class("") is shard_queue_class("")
    assert shard_queue_class("")("default", connection=Redis()).key == "rq:queue:default"
    assert shard_worker_class(ShardTestWorker, "") is ShardTestWorker


def test_a_tagged_layout_names_queues_and_jobs_after_their_shard() -> None:
    assert SHARDS.queue_name("low", 2) == "{q2}low"
    assert priority_of("{q2}low") == "low"
    assert priority_of("low") == "low"
    assert shard_of_key(SHARDS.new_job_id(1)) == 1
    assert shard_of_key("default") is None
    # One shard on a cluster is tagged too: the cluster needs the tag for its MULTIs.
    assert QueueShards.layout(1, cluster=True).queue_name("default", 0) == "{q0}default"
    with pytest.raises(ValueError, match="QUEUE_SHARDS must be at least 1"):
        QueueShards(0)


def test_tasks_spread_over_the_shards_and_always_to_the_same_one() -> None:
    task_ids = [uuid.uuid4().hex for _ in range(3000)]
    counts = Counter(SHARDS.shard_of(task_id) for task_id in task_ids)
    assert set(counts) == {0, 1, 2}
    assert all(500 <= count <= 2000 for count in counts.values()), counts
    assert [SHARDS.shard_of(task_id) for task_id in task_ids[:50]] == [
        QueueShards.layout(3, cluster=True).shard_of(task_id) for task_id in task_ids[:50]
    ]


def test_the_cluster_urls_name_their_nodes_and_bad_ones_are_named() -> None:
    nodes = startup_nodes("redis://127.0.0.1:7001, redis://10.0.0.2:7002/0")
    assert [(node.host, node.port) for node in nodes] == [("127.0.0.1", 7001), ("10.0.0.2", 7002)]
    with pytest.raises(ValueError, match="'redis://h' is not redis://host:port"):
        startup_nodes("redis://h")
    with pytest.raises(ValueError, match="names no node"):
        startup_nodes(" , ")


def test_each_shard_runs_its_jobs_on_its_own_master(redis_cluster: RedisClusterServers, cluster: ClusterClient) -> None:
    clients = shard_clients(redis_cluster, SHARDS)
    task_ids = [f"task-{n}" for n in range(60)]
    jobs = enqueue(clients, SHARDS, task_ids)
    for shard, client in clients.items():
        drain(client, SHARDS, shard)

    assert_all_finished(cluster, jobs.values())
    for task_id in task_ids:
        assert Job.fetch(jobs[task_id], connection=cluster, serializer=JSONSerializer).return_value() == 2 * len(
            task_id
        )

    # Every key RQ and the watch entries made is in a shard's slot, and each shard's slot is on its own master.
    masters_of_shard = {
        shard: cluster.nodes_manager.get_node_from_slot(cluster.keyslot(SHARDS.tag(shard))).name
        for shard in SHARDS.shards()
    }
    assert len(set(masters_of_shard.values())) == 3
    keys = [key.decode() for key in cluster.keys(target_nodes=ClusterClient.PRIMARIES)]
    tags = [re.search(r"\{q(\d)\}", key) for key in keys]
    assert [key for key, tag in zip(keys, tags, strict=True) if tag is None] == []
    per_shard = Counter(int(tag.group(1)) for tag in tags if tag)
    assert set(per_shard) == {0, 1, 2}
    assert max(per_shard.values()) <= 2 * min(per_shard.values()), per_shard
    for shard, master in masters_of_shard.items():
        assert cluster.dbsize(target_nodes=cluster.get_node(node_name=master)) == per_shard[shard]


def test_a_multi_across_two_shards_is_refused_not_run_piecemeal(cluster: ClusterClient) -> None:
    with pytest.raises(CrossSlotTransactionError), cluster.pipeline() as pipe:
        pipe.zadd(WATCH.format(tag=SHARDS.tag(0)), {"a": 0})
        pipe.zadd(WATCH.format(tag=SHARDS.tag(1)), {"b": 0})
        pipe.execute()
    assert cluster.zcard(WATCH.format(tag=SHARDS.tag(0))) == 0


def test_a_multi_runs_scripts_on_a_cluster_as_on_one_redis(cluster: ClusterClient) -> None:
    # The queue-number script of a create goes in the create's MULTI (aitask_common.queues.take_number).
    counter, entry = "aitask:{q1}:enqueued", "aitask:{q1}:task"
    with cluster.pipeline() as pipe:
        pipe.multi()
        pipe.set(entry, "x")
        take_number_like = "redis.call('SET', KEYS[2], ARGV[1] .. redis.call('INCR', KEYS[1])) return 1"
        pipe.eval(take_number_like, 2, counter, entry, "default ")
        assert pipe.execute()[-1] == 1
    assert cluster.get(entry) == b"default 1"


def test_a_shard_whose_master_is_killed_runs_its_jobs_on_the_promoted_replica(tmp_path: Path) -> None:
    with RedisClusterServers(tmp_path) as servers:
        clients = shard_clients(servers, SHARDS)
        jobs = enqueue(clients, SHARDS, [f"task-{n}" for n in range(30)])
        # The replica has every job before its master dies (replication is asynchronous: WAIT for it).
        assert clients[1].execute_command("WAIT", 1, 5000) == 1
        victim = clients[1].connection_pool.get_connection().port
        servers.kill(victim)
        wait_until(lambda: victim not in servers.masters(), timeout=30)
        servers.wait_until_healthy()

        for shard, client in clients.items():
            drain(client, SHARDS, shard)
        with servers.client() as cluster:
            assert_all_finished(cluster, jobs.values())


def test_a_shard_whose_slot_moves_to_another_master_follows_it(tmp_path: Path) -> None:
    with RedisClusterServers(tmp_path) as servers:
        clients = shard_clients(servers, SHARDS)
        first = enqueue(clients, SHARDS, [f"task-{n}" for n in range(30)])
        slot = key_slot(SHARDS.tag(1).encode())
        before = clients[1].connection_pool.get_connection().port
        servers.move_slot(slot, next(port for port in servers.masters() if port != before))

        # The shard's pooled connection still points at the old master, which now answers MOVED.
        second = enqueue(clients, SHARDS, [f"task-{n}" for n in range(30, 60)])
        for shard, client in clients.items():
            drain(client, SHARDS, shard)
        assert clients[1].connection_pool.get_connection().port != before
        with servers.client() as cluster:
            assert_all_finished(cluster, [*first.values(), *second.values()])


def test_the_settings_set_every_process_on_one_layout_and_a_dispatcher_serves_every_shard_or_those_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUE_SHARDS", "3")
    with configured(QueueShards()):
        load_settings(DispatcherSettings)
        assert queue_shards.layout() == QueueShards(3, tagged=True)
        assert watch_key(1) == "aitask:watch:{q1}" and queue_shards.layout().queue_name("low", 2) == "{q2}low"
    assert watch_key(1) == "aitask:watch"
    with pytest.raises(ValidationError, match=r"WORKER_CONCURRENCY \(2\) must be at least the number of queue shards"):
        DispatcherSettings(queue_shards=3, worker_concurrency=2)
    assert DispatcherSettings(queue_shards=3).served_shards == [0, 1, 2]
    assert DispatcherSettings(queue_shards=3, queue_shards_served="2, 0", worker_concurrency=2).served_shards == [0, 2]
    with pytest.raises(ValidationError, match=r"QUEUE_SHARDS_SERVED names '3', 'x': shards are numbered 0 to 2"):
        DispatcherSettings(queue_shards=3, queue_shards_served="1,3,x")
    with pytest.raises(ValidationError, match=r"WORKER_CONCURRENCY \(1\) must be at least the number of queue shards"):
        DispatcherSettings(queue_shards=3, queue_shards_served="0,1", worker_concurrency=1)


def test_fair_share_keeps_each_shards_turns_in_the_shard_on_its_master(cluster: ClusterClient) -> None:
    # Six tasks of one user per shard, fair share depth 2: per shard, two go to the queue and four wait their turn,
    # every key of a shard's turns in its slot (a cross-slot script would be refused).
    with configured(SHARDS):
        task_ids = [f"fair-{n}" for n in range(200)]
        per_shard = {shard: [t for t in task_ids if SHARDS.shard_of(t) == shard][:6] for shard in SHARDS.shards()}
        with cluster.pipeline(transaction=False) as pipe:
            for tasks in per_shard.values():
                for task_id in tasks:
                    fair_share.admit(pipe, task_id, "default", "ann", 2, time.time())
            admitted = pipe.execute()
        assert admitted == [1, 1, 0, 0, 0, 0] * 3
        slots = {key_slot(key) for key in cluster.scan_iter(match="aitask:fair:*")}
        assert slots == {key_slot(SHARDS.tag(shard).encode()) for shard in SHARDS.shards()}

        # A first job starting gives its shard's next task the turn; nothing moves in another shard.
        first, second, third = per_shard[0][0], per_shard[0][2], per_shard[1][2]
        assert fair_share.started(cluster, first) == (second, "default", "ann")
        backlogged = fair_share.backlogged_owners(cluster, [second, per_shard[0][3], third])
        assert backlogged == {
            per_shard[0][3]: fair_share.BacklogOwner(0, "default ann"),
            third: fair_share.BacklogOwner(1, "default ann"),
        }
        # The reconciler's rescue moves a backlog only once none of its user's jobs waits in that shard's queue.
        assert fair_share.rescue(cluster, backlogged[third]) is None
        for task_id in per_shard[1][:2]:
            fair_share.started(cluster, task_id)  # each gives the next its turn
        assert fair_share.backlogged_owners(cluster, per_shard[1]) == {
            per_shard[1][4]: fair_share.BacklogOwner(1, "default ann"),
            per_shard[1][5]: fair_share.BacklogOwner(1, "default ann"),
        }


def test_a_cluster_that_cannot_serve_is_a_redis_outage_to_its_callers(tmp_path: Path) -> None:
    # redis-py says "Redis Cluster cannot be connected" with RedisClusterException, which is no RedisError: every
    # `except RedisError` that rides out an outage would have let it through.
    with RedisClusterServers(tmp_path) as servers:
        client = cluster_client(",".join(servers.urls), socket_timeout=2)
        client.set("key", 1)
        for port in servers.live_ports():
            servers.kill(port)
        with pytest.raises(RedisError, match="cannot be connected"):
            client.get("key")
        with pytest.raises(RedisError, match="cannot be connected"), client.pipeline() as pipe:
            pipe.get("key")
            pipe.execute()


def test_scripts_in_a_pipeline_go_to_their_keys_node_without_asking_a_node_for_their_keys(
    redis_cluster: RedisClusterServers, cluster: ClusterClient
) -> None:
    def getkeys() -> int:
        stats = [Redis(port=port).info("commandstats") for port in redis_cluster.masters()]
        return sum(int(node.get("cmdstat_command|getkeys", {}).get("calls", 0)) for node in stats)

    before = getkeys()
    with cluster.pipeline(transaction=False) as pipe:
        for shard in SHARDS.shards():
            pipe.eval("return redis.call('INCR', KEYS[1])", 1, f"count:{SHARDS.tag(shard)}")
        assert pipe.execute() == [1, 1, 1]
    assert getkeys() == before


def test_each_shards_workers_share_breakers_of_their_own_and_the_tools_show_them_together(
    cluster: ClusterClient,
) -> None:
    settings = DispatcherSettings(breaker_failure_ratio=0.5, breaker_cooldown_seconds=60, queue_shards=3)
    scope = "model:test/m"
    with configured(SHARDS):
        breakers = {shard: Breakers(cluster, settings, shard) for shard in SHARDS.shards()}
        for shard_breakers in breakers.values():
            shard_breakers.record(scope, False, min_calls=2)  # each shard's keys in its own slot (a script joins them)
        breakers[1].record(scope, True, min_calls=2)  # shard 1: one of two failed: open
        assert breakers[1].admit(scope) is not None
        assert breakers[0].admit(scope) is None and breakers[2].admit(scope) is None  # the others see their own
        slots = {key_slot(key) for key in cluster.scan_iter(match="aitask:breaker*")}
        assert slots == {key_slot(SHARDS.tag(shard).encode()) for shard in SHARDS.shards()}
        (status,) = breaker_statuses(cluster)
        assert (status.scope, status.state, status.calls) == (scope, BreakerState.OPEN, 2)  # shard 1's window reset
        reset_breaker(cluster, scope)
        assert breaker_statuses(cluster) == [] and breakers[1].admit(scope) is None
