"""How long each model's upstream jobs usually take, so polls start near the likely finish.

Polling every job every few seconds from the start would multiply the poll
jobs by the duration: a 60 s video would cost twenty polls instead of three.
Each model keeps a moving mean and mean deviation of observed durations in
Redis (shared by every worker); the first poll waits until at most 90 % of
the mean (less when durations vary), later polls follow the usual short
interval. Staying below the mean matters: a first poll that always came after
the finish would only ever observe its own delay, and the estimate would creep.
"""

from __future__ import annotations

import time

from redis import Redis

DURATIONS_KEY = "aitask:upstream-durations"
# Weight of a new observation in the moving averages.
SMOOTHING = 0.2
# The first poll comes at most this share of the mean duration after submit. Every second
# between it and the finish is polled every POLL_MAX_SECONDS; with thousands of videos
# finishing together, that window is the poll load (0.8 left 5,000 60 s videos ten seconds late).
FIRST_POLL_SHARE = 0.9
# How long a worker reuses an estimate it read: every poll asks, and the estimate moves slowly.
CACHE_SECONDS = 1.0


class UpstreamDurations:
    """Per-model running estimate of upstream job duration."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._cache: dict[str, tuple[float, tuple[float, float] | None]] = {}

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
