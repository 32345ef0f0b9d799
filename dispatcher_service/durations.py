"""How long each model's upstream jobs usually take, so polls start near the likely finish.

Polling every job every few seconds from the start would multiply the poll
jobs by the duration: a 60 s video would cost twenty polls instead of three.
Each model keeps a moving mean and mean deviation of observed durations in
Redis (shared by every worker). The first poll comes at most 80 % of the mean
after submit (earlier when durations vary), the second at the mean, later ones
at the usual short interval. A duration is observed as the middle of the span
between the last poll that found the job running and the one that found it
done. Both matter: the success time alone only ever overstates the duration
(by the poll's own delay), and an estimate fed with it would creep upwards; the
first poll, well before the mean, makes sure that span has a start.

Until a model's first job finishes there is no estimate, and a burst of a
thousand videos would be polled every few seconds each, far more polls than
workers can run, so every poll queues and the first finishers are seen late.
The submit times of the model's running jobs fill the gap: only the jobs
submitted within a poll interval of the oldest one still running are polled
often; the others wait, and the first finish brings their polls forward to the
plan the new estimate gives them.
"""

from __future__ import annotations

import time

from redis import Redis

from dispatcher_service.read_cache import ReadThroughCache

DURATIONS_KEY = "aitask:upstream-durations"
# Per model: sorted set of task ids with an upstream job running, scored by submit time (epoch s).
RUNNING_KEY_PREFIX = "aitask:upstream-running:"
# Weight of a new observation in the moving averages.
SMOOTHING = 0.2
# The first poll comes at most this share of the mean duration after submit.
FIRST_POLL_SHARE = 0.8
# How long a worker reuses an estimate it read: every poll asks, and the estimate moves slowly.
CACHE_SECONDS = 1.0
# Before a model has an estimate, a job younger than the oldest running one is polled every this
# many poll intervals (its poll is brought forward when the model's first job finishes).
PRE_ESTIMATE_MAX_POLLS = 12


class UpstreamDurations:
    """Per-model running estimate of upstream job duration."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        # Per model: (mean, deviation) or None, and the oldest running job's submit time or None.
        self._estimates = ReadThroughCache(self._read_estimate, CACHE_SECONDS)
        self._oldest = ReadThroughCache(self._read_oldest, CACHE_SECONDS)

    def record(self, model_key: str, seconds: float) -> bool:
        """Fold one observed duration into the model's estimate (a lost race only drops one sample);
        True if it is the model's first."""
        previous = self._estimates.get(model_key, fresh=True)
        mean, deviation = previous or (seconds, 0.0)
        deviation += SMOOTHING * (abs(seconds - mean) - deviation)
        mean += SMOOTHING * (seconds - mean)
        self.redis.hset(DURATIONS_KEY, model_key, f"{mean:.3f} {deviation:.3f}")
        self._estimates.put(model_key, (mean, deviation))
        return previous is None

    def finished(self, model_key: str, last_polled: float | None, waited: float) -> bool:
        """A job found done `waited` s after submit; the previous poll, if any, found it running.
        True if it gave the model its first estimate."""
        return self.record(model_key, waited if last_polled is None else (last_polled + waited) / 2)

    def next_poll_in(self, model_key: str, waited: float, initial: float, interval: float) -> float:
        """Seconds until the next poll of a job submitted `waited` s ago: once well before its likely
        finish, once at it, then every `interval` (sooner while `waited` is short)."""
        plan = self.planned_polls(model_key)
        for planned in plan:
            if waited < planned - initial:
                return planned - waited
        every = min(max(waited / 4, initial), interval)
        if not plan:
            # No job of this model has finished yet. Only the oldest running ones are polled often;
            # a job submitted later most likely finishes later, and the first finish brings its
            # poll forward (`replan` in schedule.py). Bounded, in case that oldest one is stuck upstream.
            gap = max(0.0, (self.oldest_running_age(model_key) or waited) - waited)
            return every if gap < interval else PRE_ESTIMATE_MAX_POLLS * interval
        return every

    def planned_polls(self, model_key: str) -> list[float]:
        """Seconds after submit of the planned polls (well before the likely finish, at it); none
        while the model has no estimate."""
        estimate = self._estimates.get(model_key)
        return [] if estimate is None else [_earliest_finish(*estimate), estimate[0]]

    def earliest_likely_finish(self, model_key: str) -> float | None:
        """Seconds after submit before which a job of this model has rarely finished, if known."""
        estimate = self._estimates.get(model_key)
        return None if estimate is None else _earliest_finish(*estimate)

    def likely_duration(self, model_key: str, fresh: bool = False) -> float | None:
        """The mean duration of the model's jobs, if known (`fresh`: read now, not from the cache)."""
        estimate = self._estimates.get(model_key, fresh)
        return None if estimate is None else estimate[0]

    def started(self, model_key: str, task_id: str, submitted: float, forget_before: float) -> None:
        """Note a submitted upstream job; entries submitted before `forget_before` (given up on) go."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(RUNNING_KEY_PREFIX + model_key, {task_id: submitted})
            pipe.zremrangebyscore(RUNNING_KEY_PREFIX + model_key, "-inf", forget_before)
            pipe.execute()

    def stopped(self, model_key: str, task_id: str) -> None:
        """The task's upstream job is over (or no longer ours to watch)."""
        self.redis.zrem(RUNNING_KEY_PREFIX + model_key, task_id)

    def oldest_running_age(self, model_key: str) -> float | None:
        """Seconds since the oldest still-running job of the model was submitted (read at most once a second)."""
        submitted = self._oldest.get(model_key)
        return None if submitted is None else time.time() - submitted

    def _read_oldest(self, model_key: str) -> float | None:
        oldest = self.redis.zrange(RUNNING_KEY_PREFIX + model_key, 0, 0, withscores=True)
        return float(oldest[0][1]) if oldest else None

    def _read_estimate(self, model_key: str) -> tuple[float, float] | None:
        raw = self.redis.hget(DURATIONS_KEY, model_key)
        if raw is None:
            return None
        mean, deviation = raw.split()
        return float(mean), float(deviation)


def _earliest_finish(mean: float, deviation: float) -> float:
    """Seconds after submit before which a job with this duration estimate has rarely finished."""
    return max(0.0, min(FIRST_POLL_SHARE * mean, mean - 2 * deviation))
