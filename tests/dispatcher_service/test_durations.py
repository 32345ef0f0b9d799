"""The per-model duration estimate that schedules the first poll (against a real Redis)."""

from __future__ import annotations

import time
import uuid

from devstack.stack import LoneRedis
from dispatcher_service.durations import UpstreamDurations


def test_unknown_model_has_no_estimate(redis_server: LoneRedis) -> None:
    assert UpstreamDurations(redis_server.redis()).earliest_likely_finish(f"p/{uuid.uuid4()}") is None


def test_steady_durations_put_the_first_poll_before_the_finish(redis_server: LoneRedis) -> None:
    durations, key = UpstreamDurations(redis_server.redis()), f"p/{uuid.uuid4()}"
    for _ in range(30):
        durations.record(key, 30.0)
    assert 23.9 <= durations.earliest_likely_finish(key) <= 24.1


def test_varying_durations_poll_earlier(redis_server: LoneRedis) -> None:
    durations, key = UpstreamDurations(redis_server.redis()), f"p/{uuid.uuid4()}"
    for seconds in [10.0, 50.0] * 20:
        durations.record(key, seconds)
    assert durations.earliest_likely_finish(key) < 15.0


def test_the_oldest_running_job_of_a_model_is_tracked_until_it_stops(redis_server: LoneRedis) -> None:
    durations, key = UpstreamDurations(redis_server.redis()), f"p/{uuid.uuid4()}"
    assert durations.oldest_running_age(key) is None
    now = time.time()
    durations.started(key, "old", now - 20, forget_before=now - 3600)
    durations.started(key, "young", now - 5, forget_before=now - 3600)
    durations.started(key, "abandoned", now - 7200, forget_before=now - 3600)  # given up on: dropped
    assert 19 <= UpstreamDurations(redis_server.redis()).oldest_running_age(key) <= 22
    durations.stopped(key, "old")
    assert 4 <= UpstreamDurations(redis_server.redis()).oldest_running_age(key) <= 7


def test_polls_follow_the_estimate_without_creeping(redis_server: LoneRedis) -> None:
    """Jobs of a steady 30 s, each poll running 0.4 s after it was due: after the first finish, a job
    takes about three polls, is seen at most one interval late, and the estimate stays on 30 s (a
    success time alone would overstate every duration, and an estimate fed with it would creep)."""
    durations, key = UpstreamDurations(redis_server.redis()), f"p/{uuid.uuid4()}"
    true_duration, delay, initial, interval = 30.0, 0.4, 1.0, 2.5
    polls_per_job, lateness = [], []
    for _ in range(150):
        waited, last_polled, polls = durations.next_poll_in(key, 0.0, initial, interval) + delay, None, 1
        while waited < true_duration:
            last_polled, waited = waited, waited + durations.next_poll_in(key, waited, initial, interval) + delay
            polls += 1
        durations.finished(key, last_polled, waited)
        polls_per_job.append(polls)
        lateness.append(waited - true_duration)
    settled = slice(20, None)
    assert sum(polls_per_job[settled]) / len(polls_per_job[settled]) <= 3.2
    assert max(lateness[settled]) <= interval + delay
    assert 28.5 <= durations.likely_duration(key) <= 31.0
