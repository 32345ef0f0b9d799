"""The dispatcher's side of cancels (dispatcher_service/cancels.py, schedule.py) against a lone Redis."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from redis import Redis

from aitask_common.queues import POLL_HINTS_KEY, POLLS_KEY, WATCH_KEY, cancelled_key
from aitask_common.tasks import TaskDocument, utcnow
from devstack.stack import LoneRedis
from dispatcher_service.cancels import deadline_passed
from dispatcher_service.schedule import schedule_poll
from tests.dispatcher_service.test_polls import HINT


@pytest.fixture
def redis(redis_server: LoneRedis) -> Iterator[Redis]:
    client = Redis(port=redis_server.port, db=11)
    client.flushdb()
    yield client
    client.flushdb()


def test_a_poll_is_not_planned_for_a_task_cancelled_meanwhile(redis: Redis) -> None:
    schedule_poll(redis, "running", 1, HINT)
    redis.set(cancelled_key("cancelled"), "user")
    schedule_poll(redis, "cancelled", 1, HINT)
    assert redis.zscore(POLLS_KEY, "running") is not None and redis.hget(POLL_HINTS_KEY, "running") is not None
    assert redis.zscore(POLLS_KEY, "cancelled") is None and redis.hget(POLL_HINTS_KEY, "cancelled") is None
    assert redis.zscore(WATCH_KEY, "cancelled") is None


def test_a_deadline_has_passed_only_once_it_is_reached() -> None:
    now = utcnow()
    task: TaskDocument = {"deadline": now}  # type: ignore[typeddict-item]
    assert deadline_passed(task, now) and deadline_passed(task, now + timedelta(seconds=1))
    assert not deadline_passed(task, now - timedelta(milliseconds=1))
    assert not deadline_passed({}, now)  # type: ignore[typeddict-item]
