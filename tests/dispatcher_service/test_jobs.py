"""One step of a task, from "due" to "ran" (dispatcher_service/jobs.py), run in this process.

The runs use the stack's providers, simulator and FerretDB, but tasks of a database of their own and
a Redis database of their own for leases, jobs, polls and watch entries: the stack's dispatcher and
reconciler never see them. Only the provider registry is read from the stack's Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import Job
from rq.serializers import JSONSerializer

from aitask_common.outputs import GridFSOutputStore
from aitask_common.queues import POLL_HINTS_KEY, POLLS_KEY, WATCH_JOBS_KEY, WATCH_KEY
from aitask_common.rq_shards import shard_queue
from aitask_common.tasks import TaskDocument, TaskStatus, TaskType, inflight_key, utcnow
from devstack.stack import LocalStack
from dispatcher_service import jobs
from dispatcher_service.breakers import Breakers
from dispatcher_service.caps import UpstreamCaps
from dispatcher_service.durations import UpstreamDurations
from dispatcher_service.jobs import (
    KEPT_WRITE_SECONDS,
    KeptWrite,
    Runtime,
    install_runtime,
    kept_write_key,
    process_task,
    run_poll,
)
from dispatcher_service.lease import LEASE_KEY_PREFIX
from dispatcher_service.providers import ProviderDirectory
from dispatcher_service.schedule import PollHint, parse_hint
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.storage import TaskTransitions
from upstream_simulator.control import SimulatorControl

DATABASE = "aitask_jobs_test"
REDIS_DB = 6  # the services use db 0; see test_worker.py for the others
IMAGE = {"provider": "volcengine", "model": "doubao-seedream-3-0-t2i-250415"}
VIDEO = {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}
IMAGE_PARAMETERS = {"size": "1024x1024", "response_format": "url", "priority": "default"}
VIDEO_PARAMETERS = {"aspect_ratio": "16:9", "priority": "default"}


class NoDatabase:
    """Stands in for the task store where a run must not touch it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the run used the database ({name})")


class NoInstances(ProviderDirectory):
    """The registry as it looks while every instance of a provider is gone (its catalogue stays)."""

    def has_instance(self, provider: str) -> bool:
        return False


@pytest.fixture
def rt(stack: LocalStack) -> Iterator[Runtime]:
    redis = Redis(port=stack.ports.redis, db=REDIS_DB)
    redis.flushdb()
    mongo = stack.mongo()
    settings = DispatcherSettings(retry_base_seconds=0.5, provider_wait_seconds=60)
    runtime = Runtime(
        settings,
        redis,
        TaskTransitions(mongo, DATABASE),
        ProviderDirectory(stack.redis(), settings.registry_cache_seconds),
        UpstreamDurations(redis),
        GridFSOutputStore(mongo, DATABASE),
        Breakers(redis, settings),
        UpstreamCaps(redis, settings, lease_seconds=60.0),
    )
    install_runtime(runtime)
    yield runtime
    redis.flushdb()
    mongo.drop_database(DATABASE)


@pytest.fixture
def upstream(stack: LocalStack) -> Iterator[SimulatorControl]:
    """The stack's simulator, without faults after the test."""
    with stack.sim() as control:
        yield control
        control.clear_faults()


def insert_task(rt: Runtime, user_id: str, model: dict[str, str], parameters: dict[str, Any], **fields: Any) -> str:
    """A task as the task service creates it (pending, in the user's in-flight set, watched), with `fields`."""
    now = utcnow()
    task_id = uuid.uuid4().hex
    document = {
        "_id": task_id,
        "type": TaskType.VIDEO.value if model is VIDEO else TaskType.IMAGE.value,
        "status": TaskStatus.PENDING.value,
        "user_id": user_id,
        **model,
        # Its id in its prompt, so the simulator's request log tells its calls from other tests' tasks.
        "prompt": f"a lighthouse at dusk ({task_id})",
        "parameters": parameters,
        "attempts": 0,
        "created": now,
        "updated": now,
    }
    document |= fields
    rt.tasks.collection.insert_one(document)
    rt.redis.sadd(inflight_key(user_id), document["_id"])
    rt.redis.zadd(WATCH_KEY, {document["_id"]: time.time()})
    return document["_id"]


def task(rt: Runtime, task_id: str) -> TaskDocument:
    document = rt.tasks.get(task_id, None)
    assert document is not None
    return document


def hint(rt: Runtime, task_id: str) -> PollHint:
    parsed = parse_hint(rt.redis.hget(POLL_HINTS_KEY, task_id))
    assert parsed is not None
    return parsed


def assert_forgotten(rt: Runtime, task_id: str, user_id: str) -> None:
    """Nothing in Redis will move the task again."""
    assert rt.redis.zscore(WATCH_KEY, task_id) is None
    assert rt.redis.zscore(POLLS_KEY, task_id) is None
    assert not rt.redis.sismember(inflight_key(user_id), task_id)
    assert not rt.redis.exists(LEASE_KEY_PREFIX + task_id)


def next_job(rt: Runtime, task_id: str) -> Job:
    """The RQ job the watch set says runs the task next."""
    job_id = rt.redis.hget(WATCH_JOBS_KEY, task_id)
    assert job_id is not None
    job = Job.fetch(job_id.decode(), connection=rt.redis, serializer=JSONSerializer)
    assert job.func_name == "dispatcher_service.jobs.process_task" and job.args[0] == task_id
    return job


def test_a_pending_image_task_is_claimed_generated_and_finished_in_one_run(rt: Runtime, user_id: str) -> None:
    task_id = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS)
    assert process_task(task_id) == "completed"
    document = task(rt, task_id)
    assert document["status"] == "completed" and document["attempts"] == 1
    assert document["image_url"] and document["error_message"] == ""
    assert_forgotten(rt, task_id, user_id)


def test_a_video_is_submitted_then_polled_from_its_hint_without_the_database(
    rt: Runtime, user_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = insert_task(rt, user_id, VIDEO, VIDEO_PARAMETERS)
    assert process_task(task_id) == "submitted"
    document = task(rt, task_id)
    assert document["status"] == "processing" and document["attempts"] == 1
    first = hint(rt, task_id)
    assert first["upstream_job_id"] == document["upstream_job_id"] and first["last_polled"] is None
    assert first["user_id"] == user_id and first["created"] == document["created"].timestamp()
    assert rt.redis.zscore(WATCH_KEY, task_id) == rt.redis.zscore(POLLS_KEY, task_id)

    # The simulator's videos take a second: this poll finds the job running, and reads and writes no task.
    with monkeypatch.context() as patch:
        patch.setattr(rt, "tasks", NoDatabase())
        assert run_poll(task_id, first) == "polling"
    second = hint(rt, task_id)
    assert second["last_polled"] is not None and second["upstream_job_id"] == first["upstream_job_id"]

    time.sleep(1.2)
    assert run_poll(task_id, second) == "completed"
    finished = task(rt, task_id)
    assert finished["status"] == "completed" and finished["video_url"] and finished["attempts"] == 1
    assert_forgotten(rt, task_id, user_id)


def test_a_poll_without_its_hint_runs_from_the_document(rt: Runtime, user_id: str) -> None:
    task_id = insert_task(rt, user_id, VIDEO, VIDEO_PARAMETERS)
    assert process_task(task_id) == "submitted"
    upstream_job_id = task(rt, task_id)["upstream_job_id"]
    # Polled, not submitted again, and not counted as an attempt.
    assert run_poll(task_id, None) == "polling"
    assert task(rt, task_id)["attempts"] == 1 and hint(rt, task_id)["upstream_job_id"] == upstream_job_id


def test_a_stale_poll_leaves_a_task_that_moved_on_alone(rt: Runtime, user_id: str) -> None:
    task_id = insert_task(rt, user_id, VIDEO, VIDEO_PARAMETERS)
    assert process_task(task_id) == "submitted"
    stale = hint(rt, task_id)
    rt.tasks.record(task_id, user_id, TaskStatus.PROCESSING, {"upstream_job_id": "resubmitted"})
    time.sleep(1.2)
    # The old upstream job is done, but the task waits on another one now.
    assert run_poll(task_id, stale) == "moved-on"
    document = task(rt, task_id)
    assert document["status"] == "processing" and "video_url" not in document


def test_a_retryable_error_sends_the_task_back_to_pending_with_a_delayed_job(
    rt: Runtime, user_id: str, upstream: SimulatorControl
) -> None:
    upstream.set_faults("ark.images", error_rate=1.0, error_status=500)
    task_id = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS | {"priority": "low"})
    started = time.time()
    assert process_task(task_id) == "retry-scheduled"
    document = task(rt, task_id)
    assert document["status"] == "pending" and document["attempts"] == 1 and document["error_message"]
    job = next_job(rt, task_id)
    assert job.origin == "low" and job.id in shard_queue(rt.redis, "low", 0).scheduled_job_registry.get_job_ids()
    due = rt.redis.zscore(WATCH_KEY, task_id)
    # Due after the backoff, at the next whole second (RQ's schedule keeps whole seconds; see schedule.py).
    assert due is not None and due == int(due) and started + 0.25 <= due <= time.time() + 1.5


def test_a_final_upstream_error_fails_the_task_at_once(rt: Runtime, user_id: str, upstream: SimulatorControl) -> None:
    upstream.set_faults("ark.images", error_rate=1.0, error_status=400)
    task_id = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS)
    assert process_task(task_id) == "failed"
    document = task(rt, task_id)
    assert document["status"] == "failed" and document["attempts"] == 1 and document["error_message"]
    assert_forgotten(rt, task_id, user_id)


def test_a_task_whose_provider_has_no_live_instance_waits_pending_without_an_attempt(rt: Runtime, user_id: str) -> None:
    rt.providers = NoInstances(rt.providers.redis, 0)
    waiting = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS)
    assert process_task(waiting) == "waiting-for-provider"
    document = task(rt, waiting)
    assert document["status"] == "pending" and document["attempts"] == 0
    # A re-check in a while.
    assert next_job(rt, waiting).id in shard_queue(rt.redis, "default", 0).scheduled_job_registry.get_job_ids()
    waited_too_long = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS, created=utcnow() - timedelta(minutes=5))
    assert process_task(waited_too_long) == "failed"
    assert "no live instance" in task(rt, waited_too_long)["error_message"]


def test_a_model_gone_from_the_catalogue_fails_its_task(rt: Runtime, user_id: str) -> None:
    task_id = insert_task(rt, user_id, {"provider": "volcengine", "model": "retired-model"}, IMAGE_PARAMETERS)
    assert process_task(task_id) == "failed"
    assert "no longer in provider" in task(rt, task_id)["error_message"]
    assert_forgotten(rt, task_id, user_id)


def test_a_task_whose_provider_has_published_no_catalogue_waits_for_it(rt: Runtime, user_id: str) -> None:
    # As after a Redis restart without data, to a dispatcher started since: the task service accepted the task
    # against the catalogue it knew, so the provider is coming back, and its tasks wait, not fail.
    task_id = insert_task(rt, user_id, {"provider": "not-published-yet", "model": "m-1"}, IMAGE_PARAMETERS)
    assert process_task(task_id) == "waiting-for-provider"
    assert task(rt, task_id)["status"] == "pending"


def test_a_job_for_a_missing_final_or_leased_task_changes_nothing(rt: Runtime, user_id: str) -> None:
    assert process_task("no-such-task") == "missing"
    done = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS, status="completed")
    assert process_task(done) == "already-final"
    assert_forgotten(rt, done, user_id)
    held = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS)
    rt.redis.set(LEASE_KEY_PREFIX + held, "another worker")
    assert process_task(held) == "leased-elsewhere"
    assert task(rt, held)["status"] == "pending"


def test_a_run_needs_the_runtime_its_worker_installs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "_runtime", None)
    with pytest.raises(RuntimeError, match="bootstrap"):
        process_task("any")


class UnreachableFor(TaskTransitions):
    """The task store while the database is down: its first `failures` writes (transitions and records)
    raise AutoReconnect, as pymongo does during an outage or a primary election."""

    def __init__(self, store: TaskTransitions, failures: int) -> None:
        self.collection = store.collection
        self.redis = store.redis
        self.failures = failures

    def _down(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise AutoReconnect("connection refused")

    def transition(self, *args: Any, **kwargs: Any) -> bool:
        self._down()
        return super().transition(*args, **kwargs)

    def record(self, *args: Any, **kwargs: Any) -> bool:
        self._down()
        return super().record(*args, **kwargs)


def paid(upstream: SimulatorControl, endpoint: str, task_id: str) -> int:
    """The calls to `endpoint` for this task that the upstream answered 200 (a paid result)."""
    return sum(call["endpoint"] == endpoint and call["status"] == 200 for call in upstream.requests(task_id))


def test_a_paid_result_is_written_once_the_database_answers_again(
    rt: Runtime, user_id: str, upstream: SimulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS)
    monkeypatch.setattr(rt, "tasks", UnreachableFor(rt.tasks, failures=4))  # about 2 s of backoff
    assert process_task(task_id) == "completed"
    assert rt.tasks.failures == 0
    document = task(rt, task_id)
    assert document["status"] == "completed" and document["image_url"] and document["attempts"] == 1
    assert_forgotten(rt, task_id, user_id)
    assert paid(upstream, "ark.images", task_id) == 1


def test_a_paid_result_outlasting_the_retries_is_kept_and_the_next_run_writes_it_without_calling_upstream(
    rt: Runtime, user_id: str, upstream: SimulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS)
    store = rt.tasks
    monkeypatch.setattr(rt.settings, "outcome_write_seconds", 0.5)
    monkeypatch.setattr(rt, "tasks", UnreachableFor(store, failures=1000))
    assert process_task(task_id) == "write-kept"
    assert task(rt, task_id)["status"] == "processing"
    # What is kept is the paid-for image, before its copy: the next run copies it rather than make it again.
    kept = KeptWrite.loads(rt.redis.get(kept_write_key(task_id)) or b"")
    assert kept.status is None and kept.fields["generated"]["image_url"]
    assert 0 < (rt.redis.ttl(kept_write_key(task_id)) or 0) <= KEPT_WRITE_SECONDS
    # The next run is due in a few seconds (the reconciler would also find the task).
    assert next_job(rt, task_id).id in shard_queue(rt.redis, "default", 0).scheduled_job_registry.get_job_ids()
    assert not rt.redis.exists(LEASE_KEY_PREFIX + task_id)

    monkeypatch.setattr(rt, "tasks", store)
    assert process_task(task_id) == "completed"
    document = task(rt, task_id)
    assert document["status"] == "completed" and document["image_url"] == kept.fields["generated"]["image_url"]
    assert document["attempts"] == 1 and document["output"]["size"] > 0 and document.get("generated") is None
    assert not rt.redis.exists(kept_write_key(task_id))
    assert_forgotten(rt, task_id, user_id)
    assert paid(upstream, "ark.images", task_id) == 1


def test_a_submitted_video_job_outlasting_the_retries_is_kept_and_polled_not_submitted_again(
    rt: Runtime, user_id: str, upstream: SimulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = insert_task(rt, user_id, VIDEO, VIDEO_PARAMETERS)
    store = rt.tasks
    monkeypatch.setattr(rt.settings, "outcome_write_seconds", 0.3)
    monkeypatch.setattr(rt, "tasks", UnreachableFor(store, failures=1000))
    assert process_task(task_id) == "write-kept"
    assert "upstream_job_id" not in task(rt, task_id)
    monkeypatch.setattr(rt, "tasks", store)
    # Any run of the task, a poll's included, stores the upstream job first.
    assert run_poll(task_id, None) == "submitted"
    document = task(rt, task_id)
    assert document["upstream_job_id"] and document["attempts"] == 1
    assert hint(rt, task_id)["upstream_job_id"] == document["upstream_job_id"]
    assert not rt.redis.exists(kept_write_key(task_id))
    time.sleep(1.2)
    assert run_poll(task_id, hint(rt, task_id)) == "completed"
    assert paid(upstream, "visual.CVSync2AsyncSubmitTask", task_id) == 1


def test_a_finished_task_whose_redis_cleanup_fails_still_finishes(
    rt: Runtime, user_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = insert_task(rt, user_id, IMAGE, IMAGE_PARAMETERS)

    def redis_gone(*args: Any, **kwargs: Any) -> None:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(jobs, "forget_finished", redis_gone)
    # The outcome is in MongoDB; the slot stays for the reconciler to prune (test_reconciler.py).
    assert process_task(task_id) == "completed"
    assert task(rt, task_id)["status"] == "completed"
    assert rt.redis.sismember(inflight_key(user_id), task_id)
