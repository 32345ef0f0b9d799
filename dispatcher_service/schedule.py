"""What runs when: the dispatcher's writes of a task's next step, and the keys they use.

A task's next step is one of two things:
- an RQ job on the queue its priority names (`enqueue_task`): its first run (enqueued by the task
  service, task_service/enqueue.py), a retry after backoff, a re-check for a provider, or a reconciler's
  re-run. RQ's scheduler holds a delayed one until it is due.
- a poll of its running upstream job (`schedule_poll`): an entry in a sorted set scored by when it is
  due, which a thread in each worker process drains (polls.py) without RQ's per-job bookkeeping, about
  twenty Redis round trips a poll would cost as an RQ job. Its hint carries what the run needs, so a
  poll that finds the job still running reads no task document.
Either way the watch set (aitask_common.queues) says when the task is next due, so the reconciler can
tell a lost task from a waiting one, and `forget_finished` drops all of it once the task is final. What a
step does is dispatcher_service/jobs.py.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from typing import TypedDict, cast

from redis import Redis
from redis.client import Pipeline
from redis.cluster import ClusterPipeline
from rq.job import Job

from aitask_common.queue_shards import layout
from aitask_common.queues import (
    PROCESS_TASK,
    Priority,
    cancelled_key,
    forget_task,
    job_options,
    poll_hints_key,
    polls_key,
    process_task_arguments,
    shard_of,
    watch_job,
    watch_jobs_key,
    watch_key,
)
from aitask_common.redis_clients import rq_connection
from aitask_common.rq_shards import job_id_option, shard_queue
from aitask_common.tracing import current_carrier


class OptionalPollHint(TypedDict, total=False):
    """PollHint's optional fields (`total=False`: NotRequired is not seen in postponed annotations), which
    a hint from an older dispatcher lacks."""

    # The upstream's progress (0-100) the task last stored, so an unchanged one is not written again.
    progress: int


class PollHint(OptionalPollHint):
    """What a poll carries (JSON in the poll hints, aitask_common.queues): the task as a poll run needs it, less
    the request, which is never sent again once the upstream job exists. `_REPLAN` reads provider, model,
    submitted."""

    user_id: str
    type: str
    provider: str
    model: str
    priority: str
    created: float  # epoch seconds
    attempts: int
    upstream_job_id: str
    submitted: float  # epoch seconds
    # Seconds after submit of the previous poll, which found the upstream job running.
    last_polled: float | None


def parse_hint(raw: bytes | str | None) -> PollHint | None:
    """A stored hint, or None if it is gone or lacks a field (an older dispatcher wrote it): the poll then
    runs from the task document."""
    hint = json.loads(raw) if raw else None
    if isinstance(hint, dict) and PollHint.__required_keys__ <= hint.keys():
        return cast(PollHint, hint)
    return None


def enqueue_task(
    connection: Redis,
    task_id: str,
    priority: Priority | str,
    delay: timedelta | None = None,
    at_front: bool = False,
    user_id: str | None = None,
) -> Job:
    """Enqueue the job that runs `task_id` again (after `delay`, when given) and its watch entry, in one MULTI.

    `at_front` puts the job ahead of everything waiting in its queue (work already started, resumed). The job
    carries `user_id` when the caller knows it (jobs.process_task)."""
    due = time.time() + (delay.total_seconds() if delay else 0.0)
    shard = shard_of(task_id)
    target = shard_queue(connection, str(priority), shard)
    arguments = process_task_arguments(task_id, user_id)
    with rq_connection(connection, shard).pipeline() as pipe:
        pipe.multi()  # RQ would start the MULTI itself, and refuses once a command is queued
        options = job_options(task_id, current_carrier()) | job_id_option(shard) | {"pipeline": pipe}
        if delay is not None:
            # RQ's schedule keeps whole seconds, cutting the fraction off (a retry could come up to a second
            # before an upstream's Retry-After): due at the next whole second instead.
            due = math.ceil(due)
            job = cast(Job, target.enqueue_at(datetime.fromtimestamp(due, UTC), PROCESS_TASK, *arguments, **options))
        else:
            job = target.enqueue(PROCESS_TASK, *arguments, at_front=at_front, **options)
        watch_job(pipe, task_id, job.id, due)
        pipe.execute()
    return job


def schedule_poll(connection: Redis, task_id: str, delay_seconds: float, hint: PollHint) -> None:
    """Poll the task's upstream job after `delay_seconds`, carrying `hint`.

    The watch entry moves with the poll; the task has no RQ job while it waits for one. A task cancelled
    meanwhile (the task service took it out of the poll set while this run polled) gets no poll.
    """
    due = time.time() + delay_seconds
    shard = shard_of(task_id)
    keys = [polls_key(shard), poll_hints_key(shard), watch_key(shard), watch_jobs_key(shard), cancelled_key(task_id)]
    connection.eval(_SCHEDULE_POLL, len(keys), *keys, task_id, due, json.dumps(hint))


def forget_finished(connection: Redis | Pipeline, task_id: str, user_id: str | None = None) -> None:
    """A task reached a final state (or is gone): drop it from the watch set and the poll set and, when its
    user is known, from the user's in-flight set. Given a pipeline, only adds the commands to it."""
    if not isinstance(connection, Pipeline | ClusterPipeline):
        with connection.pipeline(transaction=False) as pipe:
            forget_finished(pipe, task_id, user_id)
            pipe.execute()
        return
    forget_task(connection, task_id, user_id)


# schedule_poll in one round trip, unless the task was cancelled (KEYS[5] exists): KEYS polls, hints, watch,
# watch jobs; ARGV task id, due, hint.
_SCHEDULE_POLL = """
if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""


# Bring forward the polls of one model (ARGV[1] provider, ARGV[2] model) to the first of the offsets
# ARGV[5..] after their submit time that is more than ARGV[4] s after ARGV[3] (now), or to then if all
# are past, when that is earlier than their current due time; returns how many moved. Hints are JSON
# (cjson is built into Redis).
_REPLAN = """
local now, initial = tonumber(ARGV[3]), tonumber(ARGV[4])
local moved = 0
local due = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #due, 2 do
  local raw = redis.call('HGET', KEYS[2], due[i])
  if raw then
    local hint = cjson.decode(raw)
    if hint.provider == ARGV[1] and hint.model == ARGV[2] then
      local planned = now + initial
      for j = 5, #ARGV do
        local offset = hint.submitted + tonumber(ARGV[j])
        if offset > now + initial then
          planned = offset
          break
        end
      end
      if planned < tonumber(due[i + 1]) then
        redis.call('ZADD', KEYS[1], planned, due[i])
        moved = moved + 1
      end
    end
  end
end
return moved
"""


def replan(redis: Redis, provider: str, model: str, offsets: list[float], initial: float) -> int:
    """Bring the model's waiting polls forward to the first of `offsets` (seconds after submit, in
    order) that is still ahead, or to `initial` s from now if none is, once its first job finished
    and gave it a duration estimate (see dispatcher_service/durations.py); how many moved. One pass
    over the poll set, inside Redis."""
    args: list[str | float] = [provider, model, time.time(), initial, *offsets]
    shards = layout().shards()
    return sum(int(redis.eval(_REPLAN, 2, polls_key(shard), poll_hints_key(shard), *args)) for shard in shards)
