"""What runs: one step of one task, from "due" to "ran", read top to bottom.

Two things come due (schedule.py says when):
- an RQ job, `process_task(task_id)`: the task's first run, a retry, a re-check for a provider, or a
  reconciler's re-run. It claims the pending task (processing, the attempt counted) in the round trip
  that reads it.
- a poll, `run_poll(task_id, hint)`, from the poller thread of the worker process (polls.py). Its hint
  carries the task as the run needs it, so a poll that finds the upstream job still running touches no
  database.
Both make the one `Task` a run works on and hand it, under the task's lease, to `TaskRun.run`: generate,
submit or poll through the provider, then write the outcome or schedule the next step (a poll, a retry, a
re-check for a provider). The outcome is a conditional update: whatever happened before (a crash, a
duplicate delivery, a reconciler re-run), the task document and its lease decide, so running the same
step twice is harmless.

What a run has in hand when the database is unreachable (a paid result, a submitted upstream job) is not
lost: the write is retried with backoff while the lease is renewed, and past `outcome_write_seconds` it is
kept in Redis (`aitask:kept-write:<task_id>`) with a job due shortly; the task's next run, whichever
worker takes it, finds it with the lease (the same round trip) and stores it instead of calling the
upstream again.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from bson import json_util
from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, PyMongoError
from redis import Redis
from redis.exceptions import RedisError

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common import fair_share
from aitask_common.breaker_state import model_scope
from aitask_common.fallbacks import map_parameters, split_model_key
from aitask_common.logging import bound_log_context, get_logger
from aitask_common.metrics import RETRIES, TASK_DURATION, TASKS_FINISHED, UPSTREAM_CALL
from aitask_common.mongo import client_options
from aitask_common.output_settings import OutputStoreKind
from aitask_common.outputs import (
    STORE_ERRORS,
    OutputStore,
    OutputTooLarge,
    decode_base64,
    open_output_store,
    sniff_content_type,
)
from aitask_common.provider_errors import RETRYABLE_CODES
from aitask_common.queues import Priority, leave_queue
from aitask_common.redis_clients import redis_client
from aitask_common.rq_shards import enqueue_upstream_cancel
from aitask_common.tasks import (
    GeneratedImage,
    HoldReason,
    TaskDocument,
    TaskParameters,
    TaskStatus,
    TaskType,
    utcnow,
)
from aitask_common.timeline import keep_poll
from dispatcher_service.breakers import FAILURE_CODES, Breakers
from dispatcher_service.cancels import cancel_upstream_job, deadline_passed, expire
from dispatcher_service.caps import CapFull, Slot, UpstreamCaps
from dispatcher_service.durations import UpstreamDurations
from dispatcher_service.lease import TaskLease
from dispatcher_service.providers import BreakersOpen, NoLiveInstance, ProviderCallError, ProviderDirectory
from dispatcher_service.schedule import PollHint, enqueue_task, forget_finished, replan, schedule_poll
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.storage import TaskTransitions

log = get_logger(__name__)

# Extra gRPC deadline beyond AI_TIMEOUT, so the provider's own timeout answers first.
DEADLINE_MARGIN_SECONDS = 5.0

# A write a run could not make while the database was unreachable, kept for the task's next run.
KEPT_WRITE_KEY_PREFIX = "aitask:kept-write:"
# Long enough for any outage; the next run deletes it once stored.
KEPT_WRITE_SECONDS = 7 * 24 * 3600
# How soon the next run tries a kept write again.
KEPT_WRITE_RETRY_SECONDS = 5.0
# Backoff between attempts of a write while the database is unreachable.
WRITE_RETRY_FIRST_SECONDS = 0.25
WRITE_RETRY_MAX_SECONDS = 4.0
_JSON_OPTIONS = json_util.JSONOptions(tz_aware=True, tzinfo=UTC)


def kept_write_key(task_id: str) -> str:
    """Redis key of the write a run kept for the task's next run."""
    return KEPT_WRITE_KEY_PREFIX + task_id


@dataclass(frozen=True)
class KeptWrite:
    """A write of a processing task that must not be lost: its final outcome (`status`), or (`status`
    None) the fields of its submitted upstream job or of its generated image not yet copied. `user_id` and
    `priority` let a later run re-enqueue or forget the task without reading it."""

    status: TaskStatus | None
    fields: dict[str, Any]
    upstream_job_id: str | None
    user_id: str
    priority: str

    def dumps(self) -> str:
        """JSON (MongoDB's extended JSON: datetimes survive)."""
        return json_util.dumps(
            {
                "status": self.status.value if self.status else None,
                "fields": self.fields,
                "upstream_job_id": self.upstream_job_id,
                "user_id": self.user_id,
                "priority": self.priority,
            }
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> KeptWrite:
        """What `dumps` wrote."""
        data = json_util.loads(raw, json_options=_JSON_OPTIONS)
        status = data["status"]
        return cls(
            TaskStatus(status) if status else None,
            data["fields"],
            data["upstream_job_id"],
            data["user_id"],
            data["priority"],
        )


class WriteKept(Exception):
    """The database stayed unreachable: the run's write is kept in Redis for the task's next run."""


@dataclass
class Runtime:
    """Settings and connections of one worker process (one MongoDB client, one Redis pool, pooled gRPC channels)."""

    settings: DispatcherSettings
    redis: Redis
    tasks: TaskTransitions
    providers: ProviderDirectory
    durations: UpstreamDurations
    outputs: OutputStore
    breakers: Breakers
    caps: UpstreamCaps

    @classmethod
    def open(cls, settings: DispatcherSettings, shard: int = 0) -> Runtime:
        """Connect, in the process that will use the connections (after any fork), for a worker of queue `shard`."""
        redis = redis_client(settings)
        mongo: MongoClient[dict[str, Any]] = MongoClient(**client_options(settings, "dispatcher"))
        tasks = TaskTransitions(mongo, settings.mongo_database, redis)
        breakers = Breakers(redis, settings, shard)
        providers = ProviderDirectory(redis, settings.registry_cache_seconds, breakers)
        caps = UpstreamCaps(redis, settings, lease_seconds=settings.ai_timeout + DEADLINE_MARGIN_SECONDS + 5.0)
        outputs = open_output_store(settings, mongo)
        return cls(settings, redis, tasks, providers, UpstreamDurations(redis), outputs, breakers, caps)


@dataclass(frozen=True)
class UpstreamJob:
    """An asynchronous model's job at the vendor, stored on the task before any poll."""

    job_id: str
    submitted: datetime


@dataclass(frozen=True)
class Fallback:
    """A fallback a run calls instead of the task's model, with the task's parameters mapped to it."""

    provider: str
    model: str
    served_model: str
    parameters: TaskParameters


@dataclass
class Task:
    """The one shape of a task a run works on, made from its document or from a poll's hint."""

    id: str
    user_id: str
    type: str
    provider: str
    model: str
    priority: str
    created: datetime
    attempts: int
    upstream: UpstreamJob | None = None
    # Seconds after submit of the previous poll, which found the upstream job running.
    last_polled: float | None = None
    # The upstream's progress (0-100) last stored on the task.
    progress: int | None = None
    # The request, sent by Generate and SubmitJob: a poll's hint leaves it out (a job is never submitted twice).
    prompt: str = ""
    parameters: TaskParameters = field(default_factory=lambda: TaskParameters())
    # An image an earlier run was paid for, whose copy failed.
    generated: GeneratedImage | None = None
    # The create allowed a fallback (aitask_common/fallbacks.py).
    allow_fallback: bool = False

    @property
    def model_key(self) -> str:
        """The key of the task's model in the shared duration estimates."""
        return f"{self.provider}/{self.model}"

    @classmethod
    def from_document(cls, document: TaskDocument) -> Task:
        """The task an RQ job runs, as MongoDB holds it."""
        parameters = document.get("parameters", TaskParameters())
        upstream_job_id, submitted = document.get("upstream_job_id"), document.get("submitted")
        return cls(
            id=document["_id"],
            user_id=document["user_id"],
            type=document["type"],
            provider=document["provider"],
            model=document["model"],
            priority=parameters.get("priority", Priority.DEFAULT.value),
            created=document["created"],
            attempts=document.get("attempts", 0),
            upstream=UpstreamJob(upstream_job_id, submitted) if upstream_job_id and submitted else None,
            progress=document.get("progress"),
            prompt=document["prompt"],
            parameters=parameters,
            generated=document.get("generated"),
            allow_fallback=document.get("allow_fallback", False),
        )

    @classmethod
    def from_hint(cls, task_id: str, hint: PollHint) -> Task:
        """The task a poll runs, from what its hint carries."""
        return cls(
            id=task_id,
            user_id=hint["user_id"],
            type=hint["type"],
            provider=hint["provider"],
            model=hint["model"],
            priority=hint["priority"],
            created=datetime.fromtimestamp(hint["created"], UTC),
            attempts=hint["attempts"],
            upstream=UpstreamJob(hint["upstream_job_id"], datetime.fromtimestamp(hint["submitted"], UTC)),
            last_polled=hint["last_polled"],
            progress=hint.get("progress"),
        )

    def poll_hint(self, upstream: UpstreamJob) -> PollHint:
        """What the next poll of `upstream` carries."""
        hint = PollHint(
            user_id=self.user_id,
            type=self.type,
            provider=self.provider,
            model=self.model,
            priority=self.priority,
            created=self.created.timestamp(),
            attempts=self.attempts,
            upstream_job_id=upstream.job_id,
            submitted=upstream.submitted.timestamp(),
            last_polled=self.last_polled,
        )
        if self.progress is not None:
            hint["progress"] = self.progress
        return hint


# RQ calls `process_task` by name with only a task id: the runtime is the process's, installed once by the
# worker's bootstrap (dispatcher_service/worker.py) from the settings the dispatcher's main read.
_runtime: Runtime | None = None


def install_runtime(runtime: Runtime) -> None:
    """Make `runtime` the one every run in this process uses."""
    global _runtime
    _runtime = runtime


def process_task(task_id: str, user_id: str | None = None) -> str:
    """RQ's entry point; returns a short word saying what happened (kept as the job result). `user_id`, the
    task's user, routes its reads and writes to one shard of a sharded MongoDB; a job without it (queued before
    jobs carried it) reads it first."""
    if _runtime is not None:
        _leave_queue(_runtime.redis, task_id)
    return _run(task_id, None, user_id)


def _leave_queue(redis: Redis, task_id: str) -> None:
    """The task no longer waits in its queue (queue positions, aitask_common.queues), and if it took its user's
    turn (aitask_common.fair_share), the user's next backlogged task takes the next; best effort (the reconciler
    advances a backlog left behind)."""
    try:
        leave_queue(redis, task_id)
        next_turn = fair_share.started(redis, task_id)
        if next_turn is not None:
            next_task, priority, user_id = next_turn
            enqueue_task(redis, next_task, priority, user_id=user_id)
    except RedisError as error:
        log.warning("queue position not updated", error=str(error))


def run_poll(task_id: str, hint: PollHint | None) -> str:
    """The poller's entry point; without a hint (gone, or from an older dispatcher) it runs as a job does."""
    return _run(task_id, hint, None)


def cancel_upstream(task_id: str, provider: str, model: str, upstream_job_id: str, first_tried: float) -> str:
    """RQ's entry point for cancelling a cancelled task's upstream job (dispatcher_service/cancels.py)."""
    if _runtime is None:
        raise RuntimeError("no dispatcher runtime in this process: the worker's bootstrap installs it")
    rt = _runtime
    with bound_log_context(task_id=task_id):
        return cancel_upstream_job(
            rt.settings, rt.redis, rt.providers, task_id, provider, model, upstream_job_id, first_tried
        )


def _run(task_id: str, hint: PollHint | None, user_id: str | None) -> str:
    if _runtime is None:
        raise RuntimeError("no dispatcher runtime in this process: the worker's bootstrap installs it")
    rt = _runtime
    lease = TaskLease(rt.redis, task_id, rt.settings.lease_seconds, also_read=kept_write_key(task_id))
    with bound_log_context(task_id=task_id), lease:
        if not lease.acquired:
            log.info("task is held by another worker")
            return "leased-elsewhere"
        if lease.read is not None:
            return _store_kept(rt, lease, task_id, KeptWrite.loads(lease.read))
        task = Task.from_hint(task_id, hint) if hint is not None else _claim(rt, task_id, user_id)
        return task if isinstance(task, str) else TaskRun(rt, lease, task).run()


def _store_kept(rt: Runtime, lease: TaskLease, task_id: str, kept: KeptWrite) -> str:
    """An earlier run had this task's outcome (or its upstream job) in hand but could not store it: store it
    now (the upstream is not called for it again), then carry on from there."""
    try:
        document = rt.tasks.get(task_id, kept.user_id)
    except ConnectionFailure:
        log.warning("database still unreachable; the kept write waits")
        enqueue_task(
            rt.redis, task_id, kept.priority, timedelta(seconds=KEPT_WRITE_RETRY_SECONDS), user_id=kept.user_id
        )
        return "write-kept"
    if document is None or TaskStatus(document["status"]).is_final:
        with rt.redis.pipeline(transaction=False) as pipe:
            forget_finished(pipe, task_id, kept.user_id)
            pipe.delete(kept_write_key(task_id))
            pipe.execute()
        if document is not None and document["status"] == TaskStatus.CANCELLED and "upstream_job_id" in kept.fields:
            # Cancelled while its upstream job's record waited here: nothing will poll that job; stop it.
            upstream_job_id = kept.fields["upstream_job_id"]
            enqueue_upstream_cancel(rt.redis, task_id, document["provider"], document["model"], upstream_job_id)
        return "missing" if document is None else "already-final"
    log.info("storing the write an earlier run kept", status=kept.status or "upstream job")
    return TaskRun(rt, lease, Task.from_document(document), TaskStatus(document["status"])).resume(kept)


def _claim(rt: Runtime, task_id: str, user_id: str | None) -> Task | str:
    """The task, now processing, or a word saying why there is nothing to run.

    A pending task is claimed (its attempt counted) and read in one round trip. A processing one either
    waits on its upstream job (it is polled, no attempt counted) or was left by a worker that died
    mid-call (it runs again, as a new attempt).
    """
    user_id = user_id or rt.tasks.owner(task_id)
    if user_id is None:
        return _missing(rt, task_id)
    document = rt.tasks.claim(task_id, user_id)
    if document is not None:
        return Task.from_document(document)
    document = rt.tasks.get(task_id, user_id)
    if document is None:
        return _missing(rt, task_id)
    status = TaskStatus(document["status"])
    if status.is_final:
        # A duplicate job (a reconciler re-enqueue that raced the finish) re-added the watch entry.
        forget_finished(rt.redis, task_id, document["user_id"])
        return "already-final"
    if status is TaskStatus.PENDING and deadline_passed(document):
        # The claim refused it: not started upstream by its deadline.
        return "deadline-passed" if expire(rt.tasks.collection, rt.redis, task_id, document["user_id"]) else "lost-race"
    task = Task.from_document(document)
    if task.upstream is None:
        # Processing from a dead owner (or pending again since the claim): counted as a new attempt.
        if not rt.tasks.transition(task_id, task.user_id, status, TaskStatus.PROCESSING, attempts_delta=1):
            return "lost-race"
        task.attempts += 1
    return task


def _missing(rt: Runtime, task_id: str) -> str:
    log.warning("job dropped: task does not exist")
    forget_finished(rt.redis, task_id)
    return "missing"


class TaskRun:
    """One step of one task, executed while holding its lease; the task is processing when it starts."""

    def __init__(self, rt: Runtime, lease: TaskLease, task: Task, status: TaskStatus = TaskStatus.PROCESSING) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.lease = lease
        self.task = task
        # The task's status as this run left it: the precondition of the run's next write.
        self.status = status
        # Whether this run stores a write an earlier run kept in Redis (deleted once stored).
        self.resuming = False

    def run(self) -> str:
        try:
            return self._step()
        except WriteKept:
            return "write-kept"

    def resume(self, kept: KeptWrite) -> str:
        """Store `kept`, then go on as the run that kept it would have."""
        self.resuming = True
        try:
            if kept.status is not None:
                return self._finish(kept.status, kept.fields)
            if not self._store(kept):
                return self._moved_on()
            if "generated" in kept.fields:
                self.task.generated = kept.fields["generated"]
                return self._copy_and_complete(self.task.generated, {})
            upstream = UpstreamJob(kept.fields["upstream_job_id"], kept.fields["submitted"])
            self.task.upstream = upstream
            return self._submitted(upstream)
        except WriteKept:
            return "write-kept"

    def _step(self) -> str:
        task = self.task
        model = self.rt.providers.model(task.provider, task.model)
        if model is None and self.rt.providers.has_catalogue(task.provider):
            return self._fail(f"model {task.model!r} is no longer in provider {task.provider!r}")
        if model is None or not self.rt.providers.has_instance(task.provider):
            if task.upstream is None:
                self._unclaim(HoldReason.PROVIDER)
            return self._wait_for_provider()
        if task.upstream is not None:
            try:
                return self._poll(task.upstream)
            except ProviderCallError as error:
                return self._handle_error(error)
        breaker = model_scope(task.provider, task.model)
        wait = self.rt.breakers.admit(breaker)
        if wait is not None:
            return self._fall_back("circuit breaker open") or self._wait_for_breaker(breaker, wait)
        slot = self.rt.caps.acquire(task.provider, task.model)
        if isinstance(slot, CapFull):
            return self._wait_for_slot(slot)
        try:
            outcome = self._submit() if model.asynchronous else self._generate()
        except BreakersOpen as every_instance:
            return self._fall_back("circuit breaker open") or self._wait_for_breaker(
                f"every instance of {task.provider}", every_instance.wait_seconds
            )
        except ProviderCallError as error:
            if not isinstance(error, NoLiveInstance):
                self._record_model_call(breaker, failed=error.code in FAILURE_CODES)
            return self._handle_error(error)
        finally:
            if slot is not None:
                self._release_slot(slot)
        self._record_model_call(breaker, failed=False)
        return outcome

    def _wait_for_slot(self, full: CapFull) -> str:
        """A full upstream cap (caps.py): nothing reached the upstream, so the attempt does not count. Held by the
        rate, the task comes back when its turn is due; held by the concurrency cap, it waits in the cap's line
        for a freed slot to wake it, with a later look in case that wake is lost. The lease goes with the line
        entry, so a wake that comes at once finds the task free."""
        self._unclaim(HoldReason.CAP)
        if full.wait_seconds is not None:
            self._enqueue_job(full.wait_seconds)
            return "waiting-for-rate"
        self._enqueue_job(self.settings.cap_recheck_seconds)
        self.lease.release_in(self.rt.redis)
        self.rt.caps.wait_in_line(full.cap, self.task.id, self.task.priority, self.task.user_id)
        return "waiting-for-slot"

    def _release_slot(self, slot: Slot) -> None:
        try:
            for task_id, priority, user_id in self.rt.caps.release(slot):
                enqueue_task(self.rt.redis, task_id, priority, at_front=True, user_id=user_id)
        except RedisError as error:
            # The slots' leases expire on their own, and the waiting tasks look again later.
            log.warning("upstream cap slot not released", error=str(error))

    def _record_model_call(self, breaker: str, failed: bool) -> None:
        try:
            self.rt.breakers.record(breaker, failed, self.settings.breaker_model_min_calls)
        except RedisError as error:
            log.warning("circuit breaker not updated", breaker=breaker, error=str(error))

    def _fall_back(self, reason: str) -> str | None:
        """If the create allowed it, run the task on the first of its model's fallbacks (aitask_common/fallbacks.py)
        that can take its parameters, whose breaker lets a call through and whose caps have room; what the run
        returns, or None when no fallback served it (the caller waits or fails as without one)."""
        if not self.task.allow_fallback or self.task.type == "video":
            return None
        try:
            return self._first_fallback_served(reason)
        except RedisError as error:
            log.warning("no fallback tried: Redis unreachable", error=str(error))
            return None

    def _first_fallback_served(self, reason: str) -> str | None:
        for target in self._fallback_targets():
            breaker = model_scope(target.provider, target.model)
            if self.rt.breakers.admit(breaker) is not None:
                continue
            slot = self.rt.caps.acquire(target.provider, target.model)
            if isinstance(slot, CapFull):
                continue
            log.info("falling back", reason=reason, provider=target.provider, model=target.model)
            try:
                outcome = self._generate(target)
            except (ProviderCallError, BreakersOpen) as error:
                failed = isinstance(error, ProviderCallError) and error.code in FAILURE_CODES
                if isinstance(error, ProviderCallError) and not isinstance(error, NoLiveInstance):
                    self._record_model_call(breaker, failed=failed)
                log.warning("fallback failed", provider=target.provider, model=target.model, error=str(error))
                continue
            finally:
                if slot is not None:
                    self._release_slot(slot)
            self._record_model_call(breaker, failed=False)
            return outcome
        return None

    def _fallback_targets(self) -> list[Fallback]:
        """The fallbacks configured for the task's model that can take its parameters, in order."""
        targets = []
        for key in self.settings.model_fallbacks.get(self.task.model_key, []):
            provider, name = split_model_key(key)
            entry = self.rt.providers.model(provider, name)
            if entry is None or not self.rt.providers.has_instance(provider):
                continue
            parameters = map_parameters(self.task.parameters, self.task.type, entry)
            if parameters is None:
                log.info("fallback skipped: parameters cannot be mapped", provider=provider, model=name)
                continue
            targets.append(Fallback(provider, name, entry.upstream_model or name, parameters))
        return targets

    def _wait_for_breaker(self, breaker: str, wait_seconds: float) -> str:
        """An open circuit breaker: nothing reached the upstream, so the attempt does not count; the task waits,
        pending, and asks again once the breaker may let it through (jittered, so waiting tasks do not all come
        back in the same instant)."""
        self._unclaim(HoldReason.BREAKER)
        delay = wait_seconds + random.uniform(0.0, 1.0)
        log.info("circuit breaker open; task waits", breaker=breaker, delay_seconds=round(delay, 2))
        self._enqueue_job(delay)
        return "waiting-for-breaker"

    def _unclaim(self, reason: HoldReason) -> None:
        """Nothing reached the upstream: back to pending, and the attempt (and its `claimed` entry) does not count."""
        self.rt.tasks.transition(
            self.task.id, self.task.user_id, TaskStatus.PROCESSING, TaskStatus.PENDING, held=reason
        )
        self.status = TaskStatus.PENDING

    def _input(self, target: Fallback | None = None) -> pb.GenerationInput:
        parameters = target.parameters if target else self.task.parameters
        return pb.GenerationInput(
            task_id=self.task.id,
            model=target.model if target else self.task.model,
            prompt=self.task.prompt,
            size=parameters.get("size", ""),
            aspect_ratio=parameters.get("aspect_ratio", ""),
            seed=parameters.get("seed"),
            max_tokens=parameters.get("max_tokens"),
            temperature=parameters.get("temperature"),
            response_format=parameters.get("response_format", ""),
        )

    def _call(self, method: str, request: Any, target: Fallback | None = None) -> Any:
        provider = target.provider if target else self.task.provider
        started = time.perf_counter()
        code = "OK"
        try:
            return self.rt.providers.call(
                provider,
                lambda stub: getattr(stub, method),
                request,
                timeout=self.settings.ai_timeout + DEADLINE_MARGIN_SECONDS,
                guarded_model=None if method == "PollJob" else target.model if target else self.task.model,
            )
        except ProviderCallError as error:
            code = error.code.name
            raise
        finally:
            UPSTREAM_CALL.labels(provider, method, code).observe(time.perf_counter() - started)

    def _generate(self, target: Fallback | None = None) -> str:
        """Generate on the task's model, or on a fallback (the task then records it as what served it)."""
        if self.task.generated:
            log.info("copying the image an earlier run generated", attempt=self.task.attempts)
            return self._copy_and_complete(self.task.generated, {})
        request = pb.GenerateRequest(input=self._input(target))
        result: pb.GenerateResponse = self._call("Generate", request, target)
        fields: dict[str, Any] = {"text_result": result.text_result}
        if target is not None:
            fields |= {"served_provider": target.provider, "served_model": target.served_model}
        if result.total_tokens:
            fields["usage"] = {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.total_tokens,
            }
        image = GeneratedImage(
            image_url=result.image_url, image_base64=result.image_base64, revised_prompt=result.revised_prompt
        )
        copied = self._copies_outputs and self.task.type == TaskType.IMAGE and (result.image_url or result.image_base64)
        if copied and not self._keep_generated(image, fields):
            return self._moved_on()
        return self._copy_and_complete(image, fields)

    def _keep_generated(self, image: GeneratedImage, fields: dict[str, Any]) -> bool:
        """Store the paid-for image (and a fallback that made it) on the task before copying it, so a failed
        copy's retry never calls the vendor again. Like an outcome, it outlasts a database outage (kept in
        Redis past outcome_write_seconds: WriteKept); False if the task moved on meanwhile (cancelled)."""
        served: dict[str, Any] = {key: fields[key] for key in ("served_provider", "served_model") if key in fields}
        write = KeptWrite(None, {"generated": image, **served}, None, self.task.user_id, self.task.priority)
        try:
            return self._store(write)
        except PyMongoError as error:  # not an outage (say, a document too large): the copy usually succeeds
            log.warning("generated image not kept before its copy", error=str(error))
            return True

    def _copy_and_complete(self, image: GeneratedImage, fields: dict[str, Any]) -> str:
        fields |= {**image, "error_message": ""}
        if self.task.type == TaskType.IMAGE and (image["image_url"] or image["image_base64"]):
            if self._copies_outputs:
                fields |= self._copy_output(image["image_url"], image["image_base64"])
            fields["generated"] = None  # the kept image, if any, is in the task's result now
        kept = {"error_message", "generated"}  # written even when empty
        return self._complete({key: value for key, value in fields.items() if value or key in kept})

    @property
    def _copies_outputs(self) -> bool:
        return self.settings.output_store is not OutputStoreKind.NONE

    def _copy_output(self, url: str, base64_output: str = "") -> dict[str, Any]:
        """Copy the task's image or video into the output store (the base64 the vendor returned, or the bytes
        at its link, fetched by the provider so a content endpoint's key stays there); the fields that record
        it. ProviderCallError when it fails: retried as an upstream call when retryable, else final."""
        max_bytes = self.settings.output_max_bytes
        started = time.perf_counter()
        try:
            if base64_output:
                data = decode_base64(base64_output)
                stored = self.rt.outputs.put(self.task.id, [data], sniff_content_type(data), max_bytes)
            else:
                request = pb.FetchOutputRequest(model=self.task.model, url=url, max_bytes=max_bytes)
                messages = self.rt.providers.stream(
                    self.task.provider,
                    lambda stub: stub.FetchOutput,
                    request,
                    timeout=self.settings.ai_timeout + DEADLINE_MARGIN_SECONDS,
                )
                first = next(messages, None)
                if first is None:  # a provider always sends one message, if only the media type
                    raise ProviderCallError(grpc.StatusCode.UNAVAILABLE, "the provider sent no output")
                chunks = itertools.chain([first.data], (message.data for message in messages))
                stored = self.rt.outputs.put(
                    self.task.id, chunks, first.content_type or "application/octet-stream", max_bytes
                )
        except ProviderCallError as error:
            raise ProviderCallError(
                error.code, f"the output could not be copied: {error}", error.retry_after_seconds
            ) from error
        except OutputTooLarge as error:
            raise ProviderCallError(grpc.StatusCode.OUT_OF_RANGE, f"the output was not stored: {error}") from error
        except STORE_ERRORS as error:
            raise ProviderCallError(grpc.StatusCode.UNAVAILABLE, f"the output store is unavailable: {error}") from error
        log.info(
            "output stored",
            size=stored.size,
            content_type=stored.content_type,
            seconds=round(time.perf_counter() - started, 3),
        )
        fields: dict[str, Any] = {"output": stored.to_document()}
        if url:
            fields["upstream_url"] = url
        return fields

    def _submit(self) -> str:
        response: pb.SubmitJobResponse = self._call("SubmitJob", pb.SubmitJobRequest(input=self._input()))
        upstream = UpstreamJob(response.upstream_job_id, utcnow())
        # Stored before any poll, so a re-run polls this job instead of paying for a second one.
        fields = {"upstream_job_id": upstream.job_id, "submitted": upstream.submitted}
        if not self._store(KeptWrite(None, fields, None, self.task.user_id, self.task.priority)):
            # Cancelled (or deleted) while the submit was in flight: nothing will poll this job; stop it.
            log.info("upstream job submitted after a cancel: cancelling it", upstream_job_id=upstream.job_id)
            enqueue_upstream_cancel(self.rt.redis, self.task.id, self.task.provider, self.task.model, upstream.job_id)
            return self._moved_on()
        self.task.upstream = upstream
        log.info("upstream job submitted", upstream_job_id=upstream.job_id)
        return self._submitted(upstream)

    def _submitted(self, upstream: UpstreamJob) -> str:
        """The upstream job is stored on the task: plan its first poll."""
        submitted = upstream.submitted.timestamp()
        give_up = submitted - self.settings.poll_give_up_seconds
        self.rt.durations.started(self.task.model_key, self.task.id, submitted, forget_before=give_up)
        likely = self.rt.durations.earliest_likely_finish(self.task.model_key)
        self._schedule_poll(upstream, max(likely or 0.0, self.settings.poll_initial_seconds))
        return "submitted"

    def _poll(self, upstream: UpstreamJob) -> str:
        response: pb.PollJobResponse = self._call(
            "PollJob", pb.PollJobRequest(model=self.task.model, upstream_job_id=upstream.job_id)
        )
        self._note_poll(response)
        waited = (utcnow() - upstream.submitted).total_seconds()
        durations, model_key = self.rt.durations, self.task.model_key
        if response.state == pb.JOB_STATE_SUCCEEDED:
            if durations.finished(model_key, self.task.last_polled, waited):
                self._replan_waiting_polls()
            output = self._copy_output(response.video_url) if self._copies_outputs else {}
            return self._complete({"video_url": response.video_url, "error_message": ""} | output)
        if response.state == pb.JOB_STATE_FAILED:
            return self._fail(response.error_message or "upstream job failed")
        if waited > self.settings.poll_give_up_seconds:
            return self._fail(f"upstream job did not finish within {self.settings.poll_give_up_seconds:g} s")
        self.task.last_polled = waited
        self._record_progress(response.progress)
        estimated = durations.likely_duration(model_key) is not None
        self._schedule_poll(upstream, self._next_poll_delay(waited, response.poll_after_ms))
        if not estimated and durations.likely_duration(model_key, fresh=True) is not None:
            # The model's first finish came while this poll was planned without it (or from a cached
            # read): its pass over the poll set may have missed this one, so plan it again.
            self._schedule_poll(upstream, self._next_poll_delay(waited, response.poll_after_ms))
        return "polling"

    def _record_progress(self, progress: int) -> None:
        """Store the upstream's progress on the task when it changed (watchers are told by the write);
        best effort: a database outage only delays it to a later poll."""
        if not progress or progress == self.task.progress:
            return
        try:
            if self.rt.tasks.record(self.task.id, self.task.user_id, TaskStatus.PROCESSING, {"progress": progress}):
                self.task.progress = progress
        except PyMongoError as error:
            log.warning("progress not stored", error=str(error))

    def _note_poll(self, response: pb.PollJobResponse) -> None:
        """Note the poll for the task's timeline (best effort: a lost note loses no work)."""
        state = pb.JobState.Name(response.state).removeprefix("JOB_STATE_").lower()
        try:
            keep_poll(self.rt.redis, self.task.id, state, response.progress, self.settings.poll_give_up_seconds)
        except RedisError as error:
            log.warning("poll not noted for the timeline", error=str(error))

    def _replan_waiting_polls(self) -> None:
        """The model's first finish gave it an estimate: the jobs that waited for one poll by it now."""
        moved = replan(
            self.rt.redis,
            self.task.provider,
            self.task.model,
            self.rt.durations.planned_polls(self.task.model_key),
            self.settings.poll_initial_seconds,
        )
        log.info("first duration estimate: polls brought forward", model=self.task.model, polls=moved)

    def _next_poll_delay(self, waited: float, poll_after_ms: int) -> float:
        """The upstream's own hint if it gave one, else the shared duration estimates' plan
        (durations.py): derived from the submit time, so a poll writes nothing to the task."""
        initial, poll_max = self.settings.poll_initial_seconds, self.settings.poll_max_seconds
        if poll_after_ms:
            return min(max(poll_after_ms / 1000, initial), poll_max)
        return self.rt.durations.next_poll_in(self.task.model_key, waited, initial, poll_max)

    def _handle_error(self, error: ProviderCallError) -> str:
        message = str(error) or error.code.name
        upstream = self.task.upstream
        if isinstance(error, NoLiveInstance) and upstream is None:
            # Every registered instance was gone: nothing reached the upstream.
            self._unclaim(HoldReason.PROVIDER)
            return self._wait_for_provider()
        if error.code not in RETRYABLE_CODES:
            return self._fail(message)
        if upstream is not None:
            # A failed poll costs nothing upstream: poll again; poll_give_up_seconds bounds it.
            self._schedule_poll(upstream, max(self.settings.poll_max_seconds, error.retry_after_seconds or 0.0))
            return "poll-retry"
        attempts = self.task.attempts
        if attempts >= self.settings.max_attempts:
            return self._fall_back("retries spent") or self._fail(f"{message} (gave up after {attempts} attempts)")
        delay = self._backoff(attempts, error.retry_after_seconds)
        # Back to pending so the next attempt (and a reconciler) sees a task waiting to run.
        fields = {"error_message": message}
        self.rt.tasks.transition(self.task.id, self.task.user_id, TaskStatus.PROCESSING, TaskStatus.PENDING, fields)
        RETRIES.labels(self.task.provider, self.task.model).inc()
        log.info("retrying after upstream error", error=message, attempt=attempts, delay_seconds=round(delay, 2))
        self._enqueue_job(delay)
        return "retry-scheduled"

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, never shorter than the upstream's Retry-After."""
        ceiling = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** (attempts - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)

    def _wait_for_provider(self) -> str:
        provider = self.task.provider
        waited = (utcnow() - self.task.created).total_seconds()
        if waited > self.settings.provider_wait_seconds:
            return self._fail(
                f"no live instance of provider {provider!r} for {self.settings.provider_wait_seconds:g} s"
            )
        log.warning("provider has no live instance; task waits", provider=provider)
        self._enqueue_job(self.settings.provider_recheck_seconds)
        return "waiting-for-provider"

    def _complete(self, fields: dict[str, Any]) -> str:
        return self._finish(TaskStatus.COMPLETED, fields)

    def _fail(self, message: str) -> str:
        return self._finish(TaskStatus.FAILED, {"error_message": message})

    def _finish(self, status: TaskStatus, fields: dict[str, Any]) -> str:
        """Finish the task if it is still as this run left it (and still on the upstream job this run polled)."""
        upstream_job_id = self.task.upstream.job_id if self.task.upstream else None
        if not self._store(KeptWrite(status, fields, upstream_job_id, self.task.user_id, self.task.priority)):
            return self._moved_on()
        self._finished(status)
        if status is TaskStatus.COMPLETED:
            log.info("task completed", provider=self.task.provider, model=self.task.model)
        else:
            log.warning("task failed", error=fields.get("error_message", ""))
        return status.value

    def _store(self, write: KeptWrite) -> bool:
        """Make `write`; True if the task was still as this run left it. While the database is unreachable
        the write is retried with backoff (the lease is renewed meanwhile); past outcome_write_seconds it is
        kept in Redis for the task's next run, due shortly, and WriteKept is raised."""
        deadline = time.monotonic() + self.settings.outcome_write_seconds
        delay = WRITE_RETRY_FIRST_SECONDS
        while True:
            try:
                written = self._write(write)
                break
            except ConnectionFailure as error:
                if time.monotonic() + delay > deadline:
                    self._keep(write, error)
                    raise WriteKept from error
                if delay == WRITE_RETRY_FIRST_SECONDS:
                    log.warning("database unreachable; retrying the write", error=str(error))
                time.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_SECONDS)
        if delay != WRITE_RETRY_FIRST_SECONDS:
            log.info("database reachable again; write stored")
        if self.resuming:
            self.rt.redis.delete(kept_write_key(self.task.id))
        return written

    def _write(self, write: KeptWrite) -> bool:
        if write.status is None:
            return self.rt.tasks.record(self.task.id, self.task.user_id, self.status, write.fields)
        return self.rt.tasks.transition(
            self.task.id,
            self.task.user_id,
            self.status,
            write.status,
            write.fields,
            upstream_job_id=write.upstream_job_id,
        )

    def _keep(self, write: KeptWrite, error: ConnectionFailure) -> None:
        log.error(
            "database unreachable; the write is kept in Redis for the task's next run",
            error=str(error),
            waited_seconds=self.settings.outcome_write_seconds,
        )
        self.rt.redis.set(kept_write_key(self.task.id), write.dumps(), ex=KEPT_WRITE_SECONDS)
        self._enqueue_job(KEPT_WRITE_RETRY_SECONDS)

    def _moved_on(self) -> str:
        """The outcome was not written: the task was deleted, finished meanwhile, or (a stale poll) resubmitted."""
        document = self.rt.tasks.get(self.task.id, self.task.user_id)
        if document is None or TaskStatus(document["status"]).is_final:
            if self.task.upstream is not None:
                self.rt.durations.stopped(self.task.model_key, self.task.id)
            forget_finished(self.rt.redis, self.task.id, self.task.user_id)
            return "missing" if document is None else "already-final"
        return "moved-on"

    def _finished(self, status: TaskStatus) -> None:
        try:
            with self.rt.redis.pipeline(transaction=False) as pipe:
                forget_finished(pipe, self.task.id, self.task.user_id)
                self.lease.release_in(pipe)  # nothing below touches the task
                pipe.execute()
            if self.task.upstream is not None:
                self.rt.durations.stopped(self.task.model_key, self.task.id)
        except RedisError as error:
            # The outcome is in MongoDB: the reconciler prunes the user's slot and the task's watch entry
            # (reconciler.py), and the lease expires.
            log.warning("task finished, but Redis is unreachable: the reconciler forgets it", error=str(error))
        TASKS_FINISHED.labels(self.task.provider, self.task.model, self.task.type, status.value).inc()
        TASK_DURATION.labels(self.task.type).observe((utcnow() - self.task.created).total_seconds())

    def _schedule_poll(self, upstream: UpstreamJob, delay_seconds: float) -> None:
        schedule_poll(self.rt.redis, self.task.id, delay_seconds, self.task.poll_hint(upstream))

    def _enqueue_job(self, delay_seconds: float) -> None:
        delay = timedelta(seconds=delay_seconds)
        enqueue_task(self.rt.redis, self.task.id, self.task.priority, delay, user_id=self.task.user_id)
