"""The dispatcher's task writes publish change notices (aitask_common.events) for the task service's watchers."""

from __future__ import annotations

import time
import uuid

from aitask_common import timeline
from aitask_common.events import channel
from aitask_common.tasks import HoldReason, TaskStatus, utcnow
from devstack.stack import LocalStack
from dispatcher_service.storage import TaskTransitions

DATABASE = "aitask_storage_events_test"
USER = "user-storage-events"


def test_writes_a_client_sees_publish_their_kind_and_others_nothing(stack: LocalStack) -> None:
    redis, mongo = stack.redis(), stack.mongo()
    transitions = TaskTransitions(mongo, DATABASE, redis)
    task_id = uuid.uuid4().hex
    transitions.collection.insert_one(
        {"_id": task_id, "user_id": USER, "status": TaskStatus.PENDING.value, "updated": utcnow()}
    )
    pubsub = redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel(task_id))
    try:
        assert pubsub.get_message(timeout=1) is None  # the subscription is confirmed
        assert transitions.claim(task_id, USER) is not None
        submitted = {"upstream_job_id": "job-1", "submitted": utcnow()}
        assert transitions.record(task_id, USER, TaskStatus.PROCESSING, submitted)
        assert transitions.record(task_id, USER, TaskStatus.PROCESSING, {"progress": 40})
        assert not transitions.transition(task_id, USER, TaskStatus.PENDING, TaskStatus.FAILED)  # precondition fails
        assert transitions.transition(task_id, USER, TaskStatus.PROCESSING, TaskStatus.COMPLETED, {"image_url": "u"})
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


def test_a_task_held_back_keeps_a_short_timeline_and_counts_its_holds(stack: LocalStack) -> None:
    mongo = stack.mongo()
    transitions = TaskTransitions(mongo, DATABASE, None)
    task_id = uuid.uuid4().hex
    created = timeline.entry("created")
    transitions.collection.insert_one(
        {
            "_id": task_id,
            "user_id": USER,
            "status": TaskStatus.PENDING.value,
            "attempts": 0,
            "updated": utcnow(),
            "timeline": [created],
        }
    )
    try:
        for reason in (HoldReason.CAP, HoldReason.CAP, HoldReason.BREAKER):
            assert transitions.claim(task_id, USER) is not None
            assert transitions.transition(task_id, USER, TaskStatus.PROCESSING, TaskStatus.PENDING, held=reason)
        assert not transitions.transition(task_id, USER, TaskStatus.PROCESSING, TaskStatus.PENDING, held=HoldReason.CAP)
        assert transitions.claim(task_id, USER) is not None
        assert transitions.transition(task_id, USER, TaskStatus.PROCESSING, TaskStatus.COMPLETED, {"image_url": "u"})
        task = transitions.get(task_id, USER)
        assert task is not None
        # Three holds: no attempt counted, no claimed/released pair each; the claim that ran stays.
        assert [entry["event"] for entry in task["timeline"]] == ["created", "claimed", "completed"]
        assert (task["attempts"], task["held_times"], task["held_reason"]) == (1, 3, "breaker")
        held = timeline.held_entry(task)
        assert held is not None and held["times"] == 3 and held["at"] <= task["timeline"][1]["at"]
        # A task stored before timelines existed is held back the same way.
        older = uuid.uuid4().hex
        transitions.collection.insert_one(
            {"_id": older, "user_id": USER, "status": TaskStatus.PENDING.value, "attempts": 0}
        )
        assert transitions.claim(older, USER) is not None
        assert transitions.transition(older, USER, TaskStatus.PROCESSING, TaskStatus.PENDING, held=HoldReason.PROVIDER)
        stored = transitions.get(older, USER)
        assert stored is not None and (stored["held_times"], stored["timeline"]) == (1, [])
    finally:
        mongo.drop_database(DATABASE)
