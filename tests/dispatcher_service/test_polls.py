"""The poller claims due polls exactly once and leaves nothing behind (against a real Redis).

It runs on a database of its own on a lone Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis import Redis

from aitask_common.queues import POLL_HINTS_KEY, POLLS_KEY, WATCH_JOBS_KEY, WATCH_KEY
from devstack.stack import LoneRedis
from dispatcher_service.polls import CLAIM_SECONDS, Poller
from dispatcher_service.queue_admin import poll_status
from dispatcher_service.schedule import PollHint, replan, schedule_poll

HINT = PollHint(
    user_id="user-1",
    type="video",
    provider="volcengine",
    model="m",
    priority="default",
    created=1.0,
    attempts=1,
    upstream_job_id="u-1",
    submitted=1.0,
    last_polled=None,
)


@pytest.fixture
def redis(redis_server: LoneRedis) -> Iterator[Redis]:
    client = Redis(port=redis_server.port, db=9)
    client.flushdb()
    yield client
    client.flushdb()


def test_only_due_polls_are_claimed_and_each_once(redis: Redis) -> None:
    schedule_poll(redis, "due", 0, HINT)
    schedule_poll(redis, "later", 60, HINT)
    first, second = Poller(redis, lambda *_: None), Poller(redis, lambda *_: None)
    until, claimed = first.claim()
    assert claimed == [("due", HINT)]
    assert second.claim()[1] == []  # hidden while claimed
    assert redis.zscore(POLLS_KEY, "due") == pytest.approx(until)
    assert until >= time.time() + CLAIM_SECONDS - 1
    # The watch entry follows the poll, and a polled task has no RQ job.
    assert redis.zscore(WATCH_KEY, "later") == pytest.approx(redis.zscore(POLLS_KEY, "later"))
    assert not redis.hexists(WATCH_JOBS_KEY, "later")


def test_a_run_that_reschedules_keeps_the_poll_and_one_that_does_not_drops_it(redis: Redis) -> None:
    runs: list[tuple[str, PollHint | None]] = []

    def run(task_id: str, hint: PollHint | None) -> None:
        runs.append((task_id, hint))
        if task_id == "still-running":
            schedule_poll(redis, task_id, 5, HINT | {"upstream_job_id": "u-2"})

    schedule_poll(redis, "still-running", 0, HINT)
    schedule_poll(redis, "moved-on", 0, HINT)
    assert Poller(redis, run).run_once() == 2
    assert sorted(runs) == [("moved-on", HINT), ("still-running", HINT)]
    due = redis.zscore(POLLS_KEY, "still-running")
    assert due is not None and time.time() < due <= time.time() + 5
    assert redis.hget(POLL_HINTS_KEY, "still-running") is not None
    assert redis.zscore(POLLS_KEY, "moved-on") is None
    assert redis.hget(POLL_HINTS_KEY, "moved-on") is None


def test_a_poll_that_fails_comes_due_again_after_its_claim(redis: Redis) -> None:
    def run(task_id: str, hint: PollHint | None) -> None:
        raise ConnectionError("database unreachable")

    schedule_poll(redis, "unlucky", 0, HINT)
    started = time.time()
    assert Poller(redis, run).run_once() == 1
    due = redis.zscore(POLLS_KEY, "unlucky")
    assert due is not None and due >= started + CLAIM_SECONDS
    assert redis.hget(POLL_HINTS_KEY, "unlucky") is not None
    # Once the claim lapses, any poller takes it again, hint and all.
    redis.zadd(POLLS_KEY, {"unlucky": time.time() - 1})
    assert Poller(redis, lambda *_: None).claim()[1] == [("unlucky", HINT)]


def test_a_stopping_poller_hands_back_what_it_has_not_run(redis: Redis) -> None:
    poller: Poller

    def run(task_id: str, hint: PollHint | None) -> None:
        poller.stop()  # a shutdown arrives while the first poll runs

    for number in range(3):
        schedule_poll(redis, f"video-{number}", 0, HINT)
    poller = Poller(redis, run)
    assert poller.run_once() == 3
    ran, handed_back = [], []
    for number in range(3):
        due = redis.zscore(POLLS_KEY, f"video-{number}")
        (handed_back if due is not None and due <= time.time() else ran).append(due)
    # One ran (and, not rescheduled, was dropped); the two it never started are due again now.
    assert ran == [None] and len(handed_back) == 2


def test_the_first_estimate_brings_the_models_waiting_polls_forward(redis: Redis) -> None:
    now = time.time()
    video = {**HINT, "model": "video"}
    # Submitted 10 s ago, all waiting 30 s for their next poll; planned offsets 15 s and 25 s after submit.
    schedule_poll(redis, "young", 30, video | {"submitted": now - 10})
    schedule_poll(redis, "older", 30, video | {"submitted": now - 20})  # 15 s is past: the 25 s one
    schedule_poll(redis, "oldest", 30, video | {"submitted": now - 40})  # both past: it may be done, poll soon
    schedule_poll(redis, "soon", 0.5, video | {"submitted": now - 40})  # already due sooner: left alone
    schedule_poll(redis, "other-model", 30, HINT | {"submitted": now - 10})
    before = {task_id: redis.zscore(POLLS_KEY, task_id) for task_id in ("soon", "other-model")}
    assert replan(redis, "volcengine", "video", [15.0, 25.0], initial=1.0) == 3
    assert redis.zscore(POLLS_KEY, "young") == pytest.approx(now + 5, abs=0.01)
    assert redis.zscore(POLLS_KEY, "older") == pytest.approx(now + 5, abs=0.01)
    assert redis.zscore(POLLS_KEY, "oldest") == pytest.approx(now + 1, abs=0.05)
    assert {task_id: redis.zscore(POLLS_KEY, task_id) for task_id in before} == before


def test_the_queue_status_counts_waiting_and_due_polls(redis: Redis) -> None:
    schedule_poll(redis, "due", 0, HINT)
    schedule_poll(redis, "later", 60, HINT)
    assert poll_status(redis) == {"waiting": 2, "due": 1}
