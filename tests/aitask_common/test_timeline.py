"""Timeline entries (aitask_common/timeline.py): what each write adds, and polls kept in Redis until the end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from aitask_common.tasks import TaskStatus
from aitask_common.timeline import MAX_POLLS_KEPT, forget_polls, keep_poll, noted_polls, with_entries, write_entries
from devstack.stack import LoneRedis
from tests.conftest import emptied

REDIS_DB = 12


@pytest.fixture
def redis(redis_server: LoneRedis) -> Iterator[Redis]:
    with emptied(redis_server, REDIS_DB) as client:
        yield client


def described(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in entry.items() if key != "at"} for entry in entries]


@pytest.mark.parametrize(
    ("fields", "new", "expected"),
    [
        ({}, TaskStatus.PROCESSING, [{"event": "claimed"}]),
        ({"upstream_job_id": "job-1", "submitted": 1}, None, [{"event": "submitted", "upstream_job_id": "job-1"}]),
        ({"progress": 40}, None, []),
        ({"error_message": "ark 500"}, TaskStatus.PENDING, [{"event": "retry_scheduled", "error": "ark 500"}]),
        ({}, TaskStatus.PENDING, []),  # a hold: counted in held_*, not on the timeline (with_hold)
        (
            {"output": {"size": 5, "content_type": "image/png"}, "served_provider": "openai", "error_message": ""},
            TaskStatus.COMPLETED,
            [
                {"event": "output_stored", "size": 5, "content_type": "image/png"},
                {"event": "completed", "served_provider": "openai"},
            ],
        ),
        ({"error_message": "ark 400"}, TaskStatus.FAILED, [{"event": "failed", "error": "ark 400"}]),
    ],
)
def test_each_write_adds_what_it_changed(
    fields: dict[str, Any], new: TaskStatus | None, expected: list[dict[str, Any]]
) -> None:
    assert described(write_entries(fields, new)) == expected


def test_an_update_appends_entries_only_when_there_are_some() -> None:
    assert with_entries({"$set": {"a": 1}}, []) == {"$set": {"a": 1}}
    entries = write_entries({}, TaskStatus.PROCESSING)
    assert with_entries({"$set": {"a": 1}}, entries)["$push"] == {"timeline": {"$each": entries}}


def test_polls_wait_in_redis_in_order_and_the_latest_are_kept(redis: Redis) -> None:
    keep_poll(redis, "task-1", "running", 0, 60)
    keep_poll(redis, "task-1", "running", 40, 60)
    polls = noted_polls(redis, "task-1")
    assert described(polls) == [
        {"event": "polled", "state": "running"},
        {"event": "polled", "state": "running", "progress": 40},
    ]
    assert polls[0]["at"] <= polls[1]["at"] and polls[0]["at"].tzinfo is not None
    assert 0 < redis.ttl("aitask:timeline:polls:task-1") <= 60
    for progress in range(MAX_POLLS_KEPT + 5):
        keep_poll(redis, "task-1", "running", progress + 1, 60)
    polls = noted_polls(redis, "task-1")
    assert len(polls) == MAX_POLLS_KEPT and polls[-1]["progress"] == MAX_POLLS_KEPT + 5
    forget_polls(redis, "task-1")
    assert noted_polls(redis, "task-1") == []
