"""The dispatcher's task writes publish change notices (aitask_common.events) for the task service's watchers."""

from __future__ import annotations

import time
import uuid

from aitask_common.events import channel
from aitask_common.tasks import TaskStatus, utcnow
from devstack.stack import LocalStack
from dispatcher_service.storage import TaskTransitions

DATABASE = "aitask_storage_events_test"


def test_writes_a_client_sees_publish_their_kind_and_others_nothing(stack: LocalStack) -> None:
    redis, mongo = stack.redis(), stack.mongo()
    transitions = TaskTransitions(mongo, DATABASE, redis)
    task_id = uuid.uuid4().hex
    transitions.collection.insert_one({"_id": task_id, "status": TaskStatus.PENDING.value, "updated": utcnow()})
    pubsub = redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel(task_id))
    try:
        assert pubsub.get_message(timeout=1) is None  # the subscription is confirmed
        assert transitions.claim(task_id) is not None
        assert transitions.record(task_id, TaskStatus.PROCESSING, {"upstream_job_id": "job-1", "submitted": utcnow()})
        assert transitions.record(task_id, TaskStatus.PROCESSING, {"progress": 40})
        assert not transitions.transition(task_id, TaskStatus.PENDING, TaskStatus.FAILED)  # precondition fails
        assert transitions.transition(task_id, TaskStatus.PROCESSING, TaskStatus.COMPLETED, {"image_url": "u"})
        notices: list[str] = []
        deadline = time.monotonic() + 5
        while len(notices) < 3 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                notices.append(message["data"].decode())
        assert notices == ["status", "progress", "final"]
        assert pubsub.get_message(timeout=0.3) is None
    finally:
        pubsub.close()
        mongo.drop_database(DATABASE)
