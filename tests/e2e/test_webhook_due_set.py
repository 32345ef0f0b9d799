"""The webhook due set (aitask_common.webhooks.DUE_KEY), end to end: MongoDB stays the truth behind it, so a
message is delivered when Redis has lost the set, and a dispatcher killed while a receiver holds a message's
answer sends it once more after a restart, with the same `webhook-id`."""

from __future__ import annotations

import time

import httpx

from aitask_common.webhooks import DUE_COMPLETE_KEY, DUE_KEY
from devstack.stack import LocalStack
from tests.conftest import wait_until
from tests.e2e.helpers import restart_after_a_crash
from tests.e2e.test_webhooks import (
    Receiver,
    create,
    deliveries,
    receiver,  # noqa: F401 - a fixture
    secret_of,
    verified,
)


def test_a_pending_message_is_delivered_after_redis_loses_the_due_set(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    receiver.answers = [(503, {"retry-after": "4"})]
    task_id = create(rest, user_id, "text", receiver.url)
    (first,) = wait_until(lambda: receiver.of(task_id), timeout=30)
    message_id = first.headers["webhook-id"]
    redis = stack.redis()
    # The retry is stored and scored (the set's write follows MongoDB's): nothing in flight re-adds the id.
    wait_until(lambda: (redis.zscore(DUE_KEY, message_id) or 0) > time.time(), timeout=10)
    # What a Redis restart without persistence does to the set and its completion mark (the rest of Redis is
    # shared with the other tests).
    redis.delete(DUE_KEY, DUE_COMPLETE_KEY)
    assert redis.zscore(DUE_KEY, message_id) is None
    wait_until(lambda: redis.zscore(DUE_KEY, message_id), timeout=20)  # rebuilt from MongoDB
    first_seen, second = wait_until(lambda: receiver.of(task_id) if len(receiver.of(task_id)) >= 2 else None, 30)
    assert second.at - first_seen.at >= 4.0  # the rebuilt entry keeps the stored due time
    assert second.headers["webhook-id"] == message_id
    assert verified(second, secret_of(rest, user_id)["secret"])["type"] == "task.completed"
    (logged,) = wait_until(
        lambda: [m for m in deliveries(rest, task_id) if m["state"] == "delivered"] or None, timeout=10
    )
    assert [attempt["status_code"] for attempt in logged["attempts"]] == [503, 200]
    wait_until(lambda: redis.zscore(DUE_KEY, message_id) is None, timeout=10)  # delivered: it left the set


def test_a_dispatcher_killed_mid_delivery_sends_the_message_once_more(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    receiver.stalls = 1  # the first request gets no answer until the dispatcher is dead
    task_id = create(rest, user_id, "text", receiver.url)
    wait_until(lambda: receiver.of(task_id), timeout=30)
    stack.kill("dispatcher")
    try:
        receiver.released.set()
    finally:
        restart_after_a_crash(stack)
    # The killed claim's lease (timeout + DNS timeout + margin) passes, then the restarted dispatcher sends again.
    wait_until(lambda: len(receiver.of(task_id)) >= 2, timeout=60)
    (logged,) = wait_until(
        lambda: [m for m in deliveries(rest, task_id) if m["state"] == "delivered"] or None, timeout=10
    )
    # Delivered, it has left the due set: no third attempt can follow.
    redis = stack.redis()
    wait_until(lambda: redis.zscore(DUE_KEY, logged["message_id"]) is None, timeout=10)
    requests = receiver.of(task_id)
    assert len(requests) == 2, [request.headers["webhook-id"] for request in requests]
    secret = secret_of(rest, user_id)["secret"]
    # The receiver de-duplicates by webhook-id: both requests are one message.
    assert {request.headers["webhook-id"] for request in requests} == {logged["message_id"]}
    assert all(verified(request, secret)["type"] == "task.completed" for request in requests)
    assert [attempt["status_code"] for attempt in logged["attempts"]] == [200]
