"""Task change notices on Redis pub/sub: whoever changes a task publishes one after its MongoDB write;
task-service processes with waiters or watchers on that task subscribe, re-read it once, and fan it out.

A notice carries no task data: MongoDB stays the only source of truth, and a lost notice (pub/sub is
fire and forget, and Redis may be down) costs a waiter latency, never a wrong state, because watchers
also re-read on a slow timer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from redis import Redis
from redis.exceptions import RedisError

from aitask_common.logging import get_logger

log = get_logger(__name__)

CHANNEL_PREFIX: Final = "aitask:task-events:"


class EventKind(StrEnum):
    """What changed: the names clients see in a watch stream's `event` field."""

    STATUS = "status"
    PROGRESS = "progress"
    FINAL = "final"


def channel(task_id: str) -> str:
    """The pub/sub channel of one task."""
    return f"{CHANNEL_PREFIX}{task_id}"


def task_id_of(channel_name: str | bytes) -> str:
    """The task id a channel name belongs to."""
    name = channel_name.decode() if isinstance(channel_name, bytes) else channel_name
    return name.removeprefix(CHANNEL_PREFIX)


def publish(redis: Redis, task_id: str, kind: EventKind) -> None:
    """Tell watchers that `task_id` changed; best effort (see the module's docstring)."""
    try:
        redis.publish(channel(task_id), kind.value)
    except RedisError as error:
        log.warning("task event not published", task_id=task_id, kind=kind.value, error=str(error))
