"""The RQ job: run one task a step further (call, submit, or poll) and write the outcome.

A job carries only a task id. Whatever happened before (a crash, a duplicate
delivery, a reconciler re-enqueue), the task document and its lease decide
what to do, so running the same job twice is harmless.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from pymongo import MongoClient
from redis import Redis

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.logging import bound_log_context, get_logger
from aitask_common.metrics import RETRIES, TASK_DURATION, TASKS_FINISHED, UPSTREAM_CALL
from aitask_common.mongo import client_options
from aitask_common.provider_errors import RETRYABLE_CODES
from aitask_common.queues import enqueue_task, forget_finished, schedule_poll
from aitask_common.settings import load_settings
from aitask_common.tasks import TaskStatus, utcnow
from dispatcher_service.durations import UpstreamDurations
from dispatcher_service.lease import TaskLease
from dispatcher_service.polls import replan
from dispatcher_service.providers import NoLiveInstance, ProviderCallError, ProviderDirectory
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.storage import TaskTransitions

log = get_logger(__name__)

# Extra gRPC deadline beyond AI_TIMEOUT, so the provider's own timeout answers first.
DEADLINE_MARGIN_SECONDS = 5.0


@dataclass
class Runtime:
    """Connections of one worker process, opened on its first job (after any fork)."""

    settings: DispatcherSettings
    redis: Redis
    tasks: TaskTransitions
    providers: ProviderDirectory
    durations: UpstreamDurations


@cache
def runtime() -> Runtime:
    """This process's runtime (one MongoDB client, one Redis pool, pooled gRPC channels)."""
    settings = load_settings(DispatcherSettings)
    redis = Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout)
    tasks = TaskTransitions(MongoClient(**client_options(settings, "dispatcher")), settings.mongo_database)
    return Runtime(
        settings, redis, tasks, ProviderDirectory(redis, settings.registry_cache_seconds), UpstreamDurations(redis)
    )


def process_task(task_id: str, poll: dict[str, Any] | None = None) -> str:
    """RQ entry point, and the poller's (dispatcher_service.polls); returns a short word saying
    what happened (kept as the job result).

    A job from `enqueue_task` expects a pending task and starts it in the same round
    trip that reads it. A poll carries what it needs (see `TaskRun.poll_hint`), so a
    poll that finds the upstream job still running touches no database; the task
    document is read only once there is an outcome to write.
    """
    with bound_log_context(task_id=task_id):
        rt = runtime()
        with TaskLease(rt.redis, task_id, rt.settings.lease_seconds) as lease:
            if not lease.acquired:
                log.info("task is held by another worker")
                return "leased-elsewhere"
            if poll is not None:
                return TaskRun(rt, lease, TaskRun.task_from_hint(task_id, poll), partial=True).run()
            task = rt.tasks.claim(task_id)
            claimed = task is not None
            if task is None:
                task = rt.tasks.get(task_id)
            if task is None:
                log.warning("job dropped: task does not exist")
                forget_finished(rt.redis, task_id)
                return "missing"
            if TaskStatus(task["status"]).is_final:
                # A duplicate job (a reconciler re-enqueue that raced the finish) re-added the watch entry.
                forget_finished(rt.redis, task_id, task["user_id"])
                return "already-final"
            return TaskRun(rt, lease, task, claimed=claimed).run()


class TaskRun:
    """One step of one task, executed while holding its lease."""

    def __init__(
        self, rt: Runtime, lease: TaskLease, task: dict[str, Any], claimed: bool = False, partial: bool = False
    ) -> None:
        self.rt = rt
        self.lease = lease
        # True when process_task already moved the task to processing and counted the attempt.
        self.claimed = claimed
        # True while `task` holds only a poll hint's fields (see `_load_whole_task`).
        self.partial = partial
        self.settings = rt.settings
        self.task = task
        self.task_id: str = task["_id"]
        self.status = TaskStatus(task["status"])
        self.priority: str = task.get("parameters", {}).get("priority", "default")

    @property
    def model_key(self) -> str:
        """The key of the task's model in the shared duration estimates."""
        return f"{self.task['provider']}/{self.task['model']}"

    @staticmethod
    def task_from_hint(task_id: str, hint: dict[str, Any]) -> dict[str, Any]:
        """The fields of a processing task that a poll reads, rebuilt from a poll's hint."""
        return {
            "_id": task_id,
            "status": TaskStatus.PROCESSING.value,
            "provider": hint["provider"],
            "model": hint["model"],
            "upstream_job_id": hint["upstream_job_id"],
            "submitted": datetime.fromtimestamp(hint["submitted"], UTC),
            "parameters": {"priority": hint["priority"]},
            "last_polled": hint.get("last_polled"),
        }

    def poll_hint(self) -> dict[str, Any]:
        """What the next poll carries (JSON)."""
        return {
            "provider": self.task["provider"],
            "model": self.task["model"],
            "upstream_job_id": self.task["upstream_job_id"],
            "submitted": self.task["submitted"].timestamp(),
            "priority": self.priority,
            "last_polled": self.task.get("last_polled"),
        }

    def _load_whole_task(self) -> str | None:
        """Replace a poll hint by the task document before writing an outcome; a word saying why
        not when the task has moved on (deleted, finished, or resubmitted by another run)."""
        if not self.partial:
            return None
        task = self.rt.tasks.get(self.task_id)
        if task is None or TaskStatus(task["status"]).is_final:
            self.rt.durations.stopped(self.model_key, self.task_id)
            forget_finished(self.rt.redis, self.task_id, task["user_id"] if task else None)
            return "missing" if task is None else "stale-poll"
        if task["status"] != TaskStatus.PROCESSING.value or task.get("upstream_job_id") != self.task["upstream_job_id"]:
            return "stale-poll"
        self.task, self.partial = task, False
        return None

    def run(self) -> str:
        provider = self.task["provider"]
        model = self.rt.providers.model(provider, self.task["model"])
        if model is None:
            return self._fail(f"model {self.task['model']!r} is no longer in provider {provider!r}")
        if not self.rt.providers.has_instance(provider):
            if self.claimed:
                self._unclaim()
            return self._load_whole_task() or self._wait_for_provider()
        polling = model.asynchronous and bool(self.task.get("upstream_job_id"))
        try:
            if polling:
                return self._poll()
            if not self.claimed and not self._start_attempt():
                return "lost-race"
            return self._submit() if model.asynchronous else self._generate()
        except ProviderCallError as error:
            return self._handle_error(error, polling)

    def _start_attempt(self) -> bool:
        """Move to processing and count the attempt (from processing too: its owner crashed)."""
        if not self.rt.tasks.transition(self.task_id, self.status, TaskStatus.PROCESSING, attempts_delta=1):
            return False
        self.task["attempts"] = self.task.get("attempts", 0) + 1
        self.status = TaskStatus.PROCESSING
        return True

    def _unclaim(self) -> None:
        """Nothing reached the upstream: back to pending, and the attempt does not count."""
        self.rt.tasks.transition(self.task_id, TaskStatus.PROCESSING, TaskStatus.PENDING, attempts_delta=-1)
        self.status = TaskStatus.PENDING

    def _input(self) -> pb.GenerationInput:
        parameters = self.task.get("parameters", {})
        return pb.GenerationInput(
            task_id=self.task_id,
            model=self.task["model"],
            prompt=self.task["prompt"],
            size=parameters.get("size", ""),
            aspect_ratio=parameters.get("aspect_ratio", ""),
            seed=parameters.get("seed"),
            max_tokens=parameters.get("max_tokens"),
            temperature=parameters.get("temperature"),
            response_format=parameters.get("response_format", ""),
        )

    def _call(self, method: str, request: Any) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            return self.rt.providers.call(
                self.task["provider"],
                lambda stub: getattr(stub, method),
                request,
                timeout=self.settings.ai_timeout + DEADLINE_MARGIN_SECONDS,
            )
        except ProviderCallError as error:
            code = error.code.name
            raise
        finally:
            UPSTREAM_CALL.labels(self.task["provider"], method, code).observe(time.perf_counter() - started)

    def _generate(self) -> str:
        result: pb.GenerateResponse = self._call("Generate", pb.GenerateRequest(input=self._input()))
        fields: dict[str, Any] = {
            "image_url": result.image_url,
            "image_base64": result.image_base64,
            "revised_prompt": result.revised_prompt,
            "text_result": result.text_result,
            "error_message": "",
        }
        if result.total_tokens:
            fields["usage"] = {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.total_tokens,
            }
        return self._complete({key: value for key, value in fields.items() if value or key == "error_message"})

    def _submit(self) -> str:
        response: pb.SubmitJobResponse = self._call("SubmitJob", pb.SubmitJobRequest(input=self._input()))
        # Stored before any poll, so a re-run polls this job instead of paying for a second one.
        submitted = utcnow()
        self.rt.tasks.record(
            self.task_id, TaskStatus.PROCESSING, {"upstream_job_id": response.upstream_job_id, "submitted": submitted}
        )
        self.task |= {"upstream_job_id": response.upstream_job_id, "submitted": submitted}
        log.info("upstream job submitted", upstream_job_id=response.upstream_job_id)
        give_up = submitted.timestamp() - self.settings.poll_give_up_seconds
        self.rt.durations.started(self.model_key, self.task_id, submitted.timestamp(), forget_before=give_up)
        likely = self.rt.durations.earliest_likely_finish(self.model_key)
        self._enqueue(max(likely or 0.0, self.settings.poll_initial_seconds), poll=True)
        return "submitted"

    def _poll(self) -> str:
        response: pb.PollJobResponse = self._call(
            "PollJob", pb.PollJobRequest(model=self.task["model"], upstream_job_id=self.task["upstream_job_id"])
        )
        waited = (utcnow() - self.task["submitted"]).total_seconds()
        if response.state == pb.JOB_STATE_SUCCEEDED:
            if self.rt.durations.finished(self.model_key, self.task.get("last_polled"), waited):
                self._replan_waiting_polls()
            return self._complete({"video_url": response.video_url, "error_message": ""})
        if response.state == pb.JOB_STATE_FAILED:
            return self._fail(response.error_message or "upstream job failed")
        if waited > self.settings.poll_give_up_seconds:
            return self._fail(f"upstream job did not finish within {self.settings.poll_give_up_seconds:g} s")
        self.task["last_polled"] = waited
        estimated = self.rt.durations.likely_duration(self.model_key) is not None
        self._enqueue(self._next_poll_delay(waited, response.poll_after_ms), poll=True)
        if not estimated and self.rt.durations.likely_duration(self.model_key, fresh=True) is not None:
            # The model's first finish came while this poll was planned without it (or from a cached
            # read): its pass over the poll set may have missed this one, so plan it again.
            self._enqueue(self._next_poll_delay(waited, response.poll_after_ms), poll=True)
        return "polling"

    def _replan_waiting_polls(self) -> None:
        """The model's first finish gave it an estimate: the jobs that waited for one poll by it now."""
        moved = replan(
            self.rt.redis,
            self.task["provider"],
            self.task["model"],
            self.rt.durations.planned_polls(self.model_key),
            self.settings.poll_initial_seconds,
        )
        log.info("first duration estimate: polls brought forward", model=self.task["model"], polls=moved)

    def _next_poll_delay(self, waited: float, poll_after_ms: int) -> float:
        """The upstream's own hint if it gave one, else the shared duration estimates' plan
        (durations.py): derived from the submit time, so a poll writes nothing to the task."""
        initial, poll_max = self.settings.poll_initial_seconds, self.settings.poll_max_seconds
        if poll_after_ms:
            return min(max(poll_after_ms / 1000, initial), poll_max)
        return self.rt.durations.next_poll_in(self.model_key, waited, initial, poll_max)

    def _handle_error(self, error: ProviderCallError, polling: bool) -> str:
        message = str(error) or error.code.name
        if isinstance(error, NoLiveInstance) and not polling:
            # Every registered instance was gone: nothing reached the upstream.
            self._unclaim()
            return self._wait_for_provider()
        if error.code not in RETRYABLE_CODES:
            return self._fail(message)
        if polling:
            # A failed poll costs nothing upstream: poll again; poll_give_up_seconds bounds it.
            self._enqueue(max(self.settings.poll_max_seconds, error.retry_after_seconds or 0.0), poll=True)
            return "poll-retry"
        attempts = self.task.get("attempts", 0)
        if attempts >= self.settings.max_attempts:
            return self._fail(f"{message} (gave up after {attempts} attempts)")
        delay = self._backoff(attempts, error.retry_after_seconds)
        # Back to pending so the next attempt (and a reconciler) sees a task waiting to run.
        self.rt.tasks.transition(self.task_id, TaskStatus.PROCESSING, TaskStatus.PENDING, {"error_message": message})
        RETRIES.labels(self.task["provider"], self.task["model"]).inc()
        log.info("retrying after upstream error", error=message, attempt=attempts, delay_seconds=round(delay, 2))
        self._enqueue(delay)
        return "retry-scheduled"

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, never shorter than the upstream's Retry-After."""
        ceiling = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** (attempts - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)

    def _wait_for_provider(self) -> str:
        provider = self.task["provider"]
        waited = (utcnow() - self.task["created"]).total_seconds()
        if waited > self.settings.provider_wait_seconds:
            return self._fail(
                f"no live instance of provider {provider!r} for {self.settings.provider_wait_seconds:g} s"
            )
        log.warning("provider has no live instance; task waits", provider=provider)
        self._enqueue(self.settings.provider_recheck_seconds)
        return "waiting-for-provider"

    def _complete(self, fields: dict[str, Any]) -> str:
        if moved_on := self._load_whole_task():
            return moved_on
        if self.rt.tasks.transition(self.task_id, TaskStatus.PROCESSING, TaskStatus.COMPLETED, fields):
            self._finished(TaskStatus.COMPLETED)
            log.info("task completed", provider=self.task["provider"], model=self.task["model"])
        return "completed"

    def _fail(self, message: str) -> str:
        if moved_on := self._load_whole_task():
            return moved_on
        if self.rt.tasks.transition(self.task_id, self.status, TaskStatus.FAILED, {"error_message": message}):
            self._finished(TaskStatus.FAILED)
            log.warning("task failed", error=message)
        return "failed"

    def _finished(self, status: TaskStatus) -> None:
        with self.rt.redis.pipeline(transaction=False) as pipe:
            forget_finished(pipe, self.task_id, self.task["user_id"])
            self.lease.release_in(pipe)  # nothing below touches the task
            pipe.execute()
        if self.task.get("upstream_job_id"):
            self.rt.durations.stopped(self.model_key, self.task_id)
        TASKS_FINISHED.labels(self.task["provider"], self.task["model"], self.task["type"], status.value).inc()
        TASK_DURATION.labels(self.task["type"]).observe((utcnow() - self.task["created"]).total_seconds())

    def _enqueue(self, delay_seconds: float, poll: bool = False) -> None:
        if poll:
            schedule_poll(self.rt.redis, self.task_id, delay_seconds, self.poll_hint())
        else:
            enqueue_task(self.rt.redis, self.task_id, self.priority, timedelta(seconds=delay_seconds))
