"""The webhook due set (aitask_common.webhooks.DUE_KEY), end to end: MongoDB stays the truth behind it, so a
message is delivered when Redis has lost the set (also a final message a worker had only indexed), and a
dispatcher killed while a receiver holds a message's answer sends it once more after a restart, with the same
`webhook-id`. A worker's final message is stored by the delivery loop with its first attempt, and the loop runs
at a lower priority than the task path."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import bson
import httpx

from aitask_common.tasks import FINAL_BUCKETS_FIELD, final_buckets
from aitask_common.webhooks import (
    DUE_COMPLETE_KEY,
    DUE_KEY,
    MESSAGES_COLLECTION,
    STORED_FINALS_KEY,
    final_copy_key,
    final_message_id,
)
from devstack.stack import LocalStack
from tests.conftest import wait_until
from tests.e2e.helpers import restart_after_a_crash
from tests.e2e.test_webhooks import (
    Receiver,
    create,
    deliveries,
    receiver,  # noqa: F401 - a fixture
    secret_of,
    stored_final_task,
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


def test_a_final_message_is_stored_with_its_first_attempt_in_one_insert(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    """The worker only indexes the final message; the delivery loop renders it from the task and stores it with its
    first attempt. While the receiver holds the first request, the task's final write is the message's stored copy
    and the delivery log shows it pending; once answered, one document holds the body sent and the attempt."""
    receiver.stalls = 1
    task_id = create(rest, user_id, "text", receiver.url)
    messages = stack.tasks().database[MESSAGES_COLLECTION]
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=30)
    try:
        stored_early = messages.find_one({"_id": request.headers["webhook-id"]})
        (shown,) = deliveries(rest, task_id)
    finally:
        receiver.released.set()
    assert request.headers["webhook-id"] == final_message_id(task_id)
    assert stored_early is None
    assert shown["message_id"] == final_message_id(task_id) and shown["state"] == "pending"
    assert shown["type"] == "task.completed" and not shown.get("attempts")
    stored = wait_until(lambda: messages.find_one({"_id": final_message_id(task_id), "state": "delivered"}), 10)
    assert stored["body"] == request.body
    assert stored["attempt_count"] == 1 and [attempt["status_code"] for attempt in stored["attempts"]] == [200]
    (logged,) = deliveries(rest, task_id)
    assert logged["state"] == "delivered" and len(logged["attempts"]) == 1


def test_a_final_message_is_rendered_from_the_copy_its_worker_left(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    """The claim renders a final message from the copy of its task in Redis, not from MongoDB (here the copy
    differs from the stored task, so the body shows which was read), and takes the copy."""
    task_id = stored_final_task(stack, user_id, receiver.url, updated_ago=timedelta(seconds=1))
    copy = stack.tasks().find_one({"_id": task_id}) or {}
    redis = stack.redis()
    redis.set(final_copy_key(task_id), bson.encode(copy | {"text_result": "from the copy"}), ex=60)
    redis.zadd(DUE_KEY, {final_message_id(task_id): time.time()})
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=20)
    assert verified(request, secret_of(rest, user_id)["secret"])["data"]["text_result"] == "from the copy"
    assert redis.exists(final_copy_key(task_id)) == 0


def test_an_unreadable_copy_is_ignored_and_the_task_read_from_mongodb(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    task_id = stored_final_task(stack, user_id, receiver.url, updated_ago=timedelta(seconds=1))
    redis = stack.redis()
    redis.set(final_copy_key(task_id), b"not BSON", ex=60)
    redis.zadd(DUE_KEY, {final_message_id(task_id): time.time()})
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=20)
    assert verified(request, secret_of(rest, user_id)["secret"])["data"]["text_result"] == "hello"


def test_a_due_final_message_is_left_by_the_sweep_to_its_claim(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    """A final task whose message a worker indexed but nobody stored yet (the loop is behind) is not the sweep's
    to store: it stays unstored until its id comes due, and then the claim sends it and stores it."""
    task_id = stored_final_task(stack, user_id, receiver.url, updated_ago=timedelta(seconds=9.5))
    message_id = final_message_id(task_id)
    # Due once a sweep (every WEBHOOK_SWEEP_SECONDS, 5 in tests) has covered the task, 10 s after its final write.
    stack.redis().zadd(DUE_KEY, {message_id: time.time() + 10})
    messages = stack.tasks().database[MESSAGES_COLLECTION]
    time.sleep(8)
    assert messages.find_one({"_id": message_id}) is None
    assert receiver.of(task_id) == []
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=20)
    assert request.headers["webhook-id"] == message_id
    assert verified(request, secret_of(rest, user_id)["secret"])["data"]["text_result"] == "hello"
    logged = wait_until(lambda: messages.find_one({"_id": message_id, "state": "delivered"}), timeout=10)
    assert [attempt["status_code"] for attempt in logged["attempts"]] == [200]


def test_the_sweep_asks_redis_which_final_messages_the_loop_stored_lately(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    """Two final tasks without a stored message. One's message id is in STORED_FINALS_KEY, as if the loop had
    stored it a moment ago: the sweep takes Redis's word and reads nothing for it (so here it stays missing). The
    other is stored and delivered by the sweep, and once delivered its id is in the set."""
    marked = stored_final_task(stack, user_id, receiver.url, updated_ago=timedelta(seconds=9))
    unmarked = stored_final_task(stack, user_id, receiver.url, updated_ago=timedelta(seconds=9))
    redis = stack.redis()
    redis.zadd(STORED_FINALS_KEY, {final_message_id(marked): time.time()})
    (request,) = wait_until(lambda: receiver.of(unmarked), timeout=30)
    assert request.headers["webhook-id"] == final_message_id(unmarked)
    wait_until(lambda: redis.zscore(STORED_FINALS_KEY, final_message_id(unmarked)), timeout=10)
    # The sweep that stored the unmarked task's message covered the marked one too (written before it).
    messages = stack.tasks().database[MESSAGES_COLLECTION]
    assert messages.find_one({"_id": final_message_id(marked)}) is None
    assert receiver.of(marked) == []


def test_only_a_task_with_a_final_webhook_is_filed_for_the_sweep(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    """The worker's final write files a task whose webhook wants its final state under that write's hour and minute
    (the sweep's equality keys); a task whose webhook wants only its start is not filed."""
    final = create(rest, user_id, "text", receiver.url)
    started_only = create(rest, user_id, "text", receiver.url, webhook_events=["started"])
    tasks = stack.tasks()
    documents = [
        wait_until(lambda task_id=task_id: tasks.find_one({"_id": task_id, "status": "completed"}), timeout=30)
        for task_id in (final, started_only)
    ]
    assert documents[0][FINAL_BUCKETS_FIELD] == final_buckets(documents[0]["updated"])
    assert FINAL_BUCKETS_FIELD not in documents[1]


def test_a_final_message_lost_with_the_due_set_before_it_was_stored_is_delivered(
    stack: LocalStack,
    rest: httpx.Client,
    user_id: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    """Redis lost the due set while a final message was only indexed there (hours behind, beyond the regular
    sweep's window): the rebuild looks back days, stores the message and delivers it."""
    task_id = stored_final_task(stack, user_id, receiver.url, updated_ago=timedelta(hours=3))
    stack.redis().delete(DUE_KEY, DUE_COMPLETE_KEY)
    (request,) = wait_until(lambda: receiver.of(task_id), timeout=30)
    assert request.headers["webhook-id"] == final_message_id(task_id)
    assert verified(request, secret_of(rest, user_id)["secret"])["type"] == "task.completed"


def test_the_delivery_loop_alone_runs_at_a_lower_priority(stack: LocalStack) -> None:
    """WEBHOOK_DELIVERY_NICE (10 by default) lowers the delivery thread only: the dispatcher's other threads and
    its workers keep their priority."""
    main = stack.running["dispatcher"].pid
    threads = {int(tid): os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{main}/task")}
    # The loop's thread, and the resolver threads it starts, which inherit its priority.
    lowered = [tid for tid, nice in threads.items() if nice == 10]
    assert threads[main] == 0 and lowered and len(lowered) < len(threads), threads
    workers = Path(f"/proc/{main}/task/{main}/children").read_text().split()
    assert workers and all(os.getpriority(os.PRIO_PROCESS, int(pid)) == 0 for pid in workers)
