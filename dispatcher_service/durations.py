"""How long each model's upstream jobs usually take, so polls start near the likely finish.

Polling every job every few seconds from the start would multiply the poll
jobs by the duration: a 60 s video would cost twenty polls instead of three.
Each model keeps a moving mean and mean deviation of observed durations in
Redis (shared by every worker); the first poll waits until at most 80 % of
the mean (less when durations vary), later polls follow the usual short
interval. Staying below the mean matters: a first poll that always came after
the finish would only ever observe its own delay, and the estimate would creep.

Until a model's first job finishes there is no estimate, and a burst of a
thousand videos would be polled every few seconds each, far more polls than
workers can run, so every poll queues and the first finishers are seen late.
The submit times of the model's running jobs fill the gap: a job submitted well
after the oldest one still running is unlikely to finish first, so it is polled
less often (at most a few poll intervals apart).
"""

from __future__ import annotations

import time

from redis import Redis

DURATIONS_KEY = "aitask:upstream-durations"
# Per model: sorted set of task ids with an upstream job running, scored by submit time (epoch s).
RUNNING_KEY_PREFIX = "aitask:upstream-running:"
# Weight of a new observation in the moving averages.
SMOOTHING = 0.2
# The first poll comes at most this share of the mean duration after submit.
FIRST_POLL_SHARE = 0.8
# How long a worker reuses an estimate it read: every poll asks, and the estimate moves slowly.
CACHE_SECONDS = 1.0


class UpstreamDurations:
    """Per-model running estimate of upstream job duration."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._cache: dict[str, tuple[float, tuple[float, float] | None]] = {}
        self._oldest: dict[str, tuple[float, float | None]] = {}

    def record(self, model_key: str, seconds: float) -> None:
        """Fold one observed duration into the model's estimate (a lost race only drops one sample)."""
        mean, deviation = self._estimate(model_key, fresh=True) or (seconds, 0.0)
        deviation += SMOOTHING * (abs(seconds - mean) - deviation)
        mean += SMOOTHING * (seconds - mean)
        self.redis.hset(DURATIONS_KEY, model_key, f"{mean:.3f} {deviation:.3f}")
        self._cache[model_key] = (time.monotonic(), (mean, deviation))

    def earliest_likely_finish(self, model_key: str) -> float | None:
        """Seconds after submit before which a job of this model has rarely finished, if known."""
        estimate = self._estimate(model_key)
        if estimate is None:
            return None
        mean, deviation = estimate
        return max(0.0, min(FIRST_POLL_SHARE * mean, mean - 2 * deviation))

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
        read_at, submitted = self._oldest.get(model_key, (float("-inf"), None))
        if time.monotonic() - read_at >= CACHE_SECONDS:
            oldest = self.redis.zrange(RUNNING_KEY_PREFIX + model_key, 0, 0, withscores=True)
            submitted = float(oldest[0][1]) if oldest else None
            self._oldest[model_key] = (time.monotonic(), submitted)
        return None if submitted is None else time.time() - submitted

    def _estimate(self, model_key: str, fresh: bool = False) -> tuple[float, float] | None:
        read_at, estimate = self._cache.get(model_key, (float("-inf"), None))
        if fresh or time.monotonic() - read_at >= CACHE_SECONDS:
            raw = self.redis.hget(DURATIONS_KEY, model_key)
            estimate = None
            if raw is not None:
                mean, deviation = raw.split()
                estimate = float(mean), float(deviation)
            self._cache[model_key] = (time.monotonic(), estimate)
        return estimate
