"""The whole stack on a real Redis Cluster (3 masters, 3 replicas of Debian's redis-server on loopback) with
QUEUE_SHARDS=3: every model, lists, deletes, a retry, a cancelled video, a lost job, keys spread over the masters,
and a master killed mid-load."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from aitask_common.queue_shards import QueueShards, configured
from aitask_common.queues import polls_key, shard_of, watch_jobs_key
from aitask_common.redis_clients import rq_connection
from aitask_common.redis_cluster import ClusterClient
from aitask_common.rq_shards import shard_queue
from devstack.processes import Ports
from devstack.redis_cluster import RedisClusterServers
from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import GPT, JIMENG_VIDEO, SEEDREAM, create_task, faults, wait_for_retry

SHARDS = QueueShards.layout(3, cluster=True)
WORKERS = 4  # the test stack's dispatcher
SPREAD_TASKS = 3000


@pytest.fixture(autouse=True)
def layout() -> Iterator[None]:
    """This process names keys as the stack's services do, for these tests only."""
    with configured(SHARDS):
        yield


@pytest.fixture(scope="module")
def cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    with RedisClusterServers(tmp_path_factory.mktemp("cluster")) as servers:
        yield servers


@pytest.fixture(scope="module")
def cluster_stack(
    tmp_path_factory: pytest.TempPathFactory, cluster_servers: RedisClusterServers
) -> Iterator[LocalStack]:
    local = LocalStack(Ports.free(), tmp_path_factory.mktemp("cluster-stack"))
    local.env |= {"REDIS_CLUSTER_URLS": ",".join(cluster_servers.urls), "QUEUE_SHARDS": str(SHARDS.count)}
    # start_all waits for the providers in the registry, named as on a cluster.
    with configured(SHARDS):
        try:
            local.start_all()
            yield local
        finally:
            local.stop_all()


@pytest.fixture
def rest(cluster_stack: LocalStack) -> Iterator[httpx.Client]:
    with cluster_stack.rest() as client:
        yield client


@pytest.fixture
def cluster(cluster_stack: LocalStack) -> Iterator[ClusterClient]:
    client = cluster_stack.redis()
    assert isinstance(client, ClusterClient)
    yield client
    client.close()


def test_every_model_runs_on_the_cluster_with_tasks_spread_over_its_masters(
    rest: httpx.Client, cluster: ClusterClient, user_id: str
) -> None:
    images = [create_task(rest, user_id, "image", SEEDREAM) for _ in range(24)]
    text = create_task(rest, user_id, "text", GPT)
    video = create_task(rest, user_id, "video", JIMENG_VIDEO)
    for task_id in [*images, text, video]:
        assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"
    finished = [shard_queue(cluster, "default", shard).finished_job_registry.count for shard in SHARDS.shards()]
    assert all(finished), finished
    # Each shard's RQ namespace lives on its own master.
    masters = {shard: rq_connection(cluster, shard).connection_pool.get_connection().port for shard in SHARDS.shards()}
    assert len(set(masters.values())) == 3

    listed = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "limit": 50}).json()["data"]
    assert {task["task_id"] for task in listed["tasks"]} == {*images, text, video}
    assert rest.delete(f"/api/v1/ai/task/{images[0]}").status_code == 200
    assert rest.get(f"/api/v1/ai/task/result/{images[0]}").status_code == 404


def test_a_retry_and_a_cancelled_video_on_the_cluster(
    cluster_stack: LocalStack, rest: httpx.Client, cluster: ClusterClient, user_id: str
) -> None:
    with faults(cluster_stack, "ark.images", rate_limit_rate=1.0, retry_after_s=0.3):
        task_id = create_task(rest, user_id, "image", SEEDREAM)
        wait_for_retry(cluster_stack, task_id)
    assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"

    with faults(cluster_stack, "visual.CVSync2AsyncGetResult", video_seconds=30.0):
        video = create_task(rest, user_id, "video", JIMENG_VIDEO)
        polls = polls_key(shard_of(video))
        wait_until(lambda: cluster.zscore(polls, video) is not None, timeout=15)
        assert rest.post(f"/api/v1/ai/task/{video}/cancel").status_code == 200
        assert cluster.zscore(polls, video) is None
    assert wait_for_status(rest, video, {"cancelled"})["status"] == "cancelled"


def test_a_lost_job_is_found_by_the_reconciler_on_the_cluster(
    cluster_stack: LocalStack, rest: httpx.Client, cluster: ClusterClient, user_id: str
) -> None:
    cluster_stack.stop("dispatcher")
    try:
        task_id = create_task(rest, user_id, "image", SEEDREAM)
        shard = shard_of(task_id)
        job_id = cluster.hget(watch_jobs_key(shard), task_id).decode()
        assert cluster.lrem(shard_queue(cluster, "default", shard).key, 0, job_id) == 1
        Job.fetch(job_id, connection=rq_connection(cluster, shard), serializer=JSONSerializer).delete()
    finally:
        cluster_stack.start("dispatcher")
    assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=60)["status"] == "completed"


def test_a_killed_master_loses_no_accepted_task_and_pays_for_none_twice(
    cluster_stack: LocalStack, cluster_servers: RedisClusterServers, rest: httpx.Client, user_id: str
) -> None:
    accepted: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with cluster_stack.rest() as client:
            while not stop.is_set():
                response = client.post(
                    "/api/v1/ai/image/task", json={"prompt": f"cluster {user_id}", "user_id": user_id, **SEEDREAM}
                )
                if response.status_code == 200:
                    accepted.append(response.json()["data"]["task_id"])

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_until(lambda: len(accepted) >= 20, timeout=30)
        victim = rq_connection(cluster_stack.redis(), 1).connection_pool.get_connection().port
        cluster_servers.kill(victim)
        wait_until(lambda: victim not in cluster_servers.masters(), timeout=30)
        cluster_servers.wait_until_healthy()
        count = len(accepted)
        wait_until(lambda: len(accepted) >= count + 20, timeout=60)
    finally:
        stop.set()
        loader.join()
    for task_id in accepted:
        assert wait_for_status(rest, task_id, {"completed", "failed"}, timeout=120)["status"] == "completed"
    with cluster_stack.sim() as sim:
        calls = [call for call in sim.requests(user_id) if call["endpoint"] == "ark.images"]
    # At most the calls in flight when the master died (one per worker) are made twice.
    assert len(accepted) <= len(calls) <= len(accepted) + WORKERS


@pytest.mark.slow
def test_three_thousand_tasks_leave_each_master_a_share_of_the_keys_within_twice_an_even_split(
    cluster_stack: LocalStack, cluster: ClusterClient
) -> None:
    before = {node.name: cluster.dbsize(target_nodes=node) for node in cluster.get_primaries()}
    users = [f"spread-{uuid.uuid4().hex[:8]}-{n}" for n in range(SPREAD_TASKS // 15)]

    def create_for(user_ids: list[str]) -> list[str]:
        with cluster_stack.rest() as client:
            return [create_task(client, user, "image", SEEDREAM) for user in user_ids for _ in range(15)]

    with ThreadPoolExecutor(4) as pool:
        created = [task for batch in pool.map(create_for, [users[n::4] for n in range(4)]) for task in batch]
    assert len(created) == SPREAD_TASKS
    with cluster_stack.rest() as client:
        for task_id in created:
            assert wait_for_status(client, task_id, {"completed", "failed"}, timeout=120)["status"] == "completed"
    grown = {node.name: cluster.dbsize(target_nodes=node) - before[node.name] for node in cluster.get_primaries()}
    even = sum(grown.values()) / len(grown)
    assert all(even / 2 <= keys <= even * 2 for keys in grown.values()), grown
