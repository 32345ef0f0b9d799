"""Concurrent creates over gRPC, which the task service stores and enqueues in shared batches."""

from __future__ import annotations

import uuid
from collections import Counter

import grpc

from aitask.v1 import task_service_pb2 as pb
from aitask_common.queues import WATCH_KEY
from devstack.stack import LocalStack
from tests.conftest import wait_until
from tests.e2e.helpers import SEEDREAM, job_whereabouts, stop_dispatcher, waiting_job_task_ids

USERS = 10
TASKS_PER_USER = 20  # under the stack's in-flight cap of 30 per user


def image(user_id: str, prompt: str = "a flock of starlings", key: str = "") -> pb.CreateImageTaskRequest:
    return pb.CreateImageTaskRequest(prompt=prompt, user_id=user_id, idempotency_key=key, **SEEDREAM)


def outcome(call: grpc.Future) -> str | grpc.StatusCode:
    """The created task's id, or the call's error code."""
    try:
        return call.result().data.task_id
    except grpc.RpcError as error:
        return error.code()


def test_200_concurrent_creates_are_each_stored_and_enqueued_once(stack: LocalStack) -> None:
    stub = stack.task_stub(via_envoy=False)
    users = [f"burst-{uuid.uuid4().hex[:8]}-{n}" for n in range(USERS)]
    stop_dispatcher(stack)  # jobs stay queued, where they can be counted
    task_ids: set[str] = set()
    try:
        calls = [
            stub.CreateImageTask.future(image(user_id, f"starling {n}"), timeout=30)
            for n in range(TASKS_PER_USER)
            for user_id in users
        ]
        outcomes = [outcome(call) for call in calls]
        task_ids = {task_id for task_id in outcomes if isinstance(task_id, str)}
        jobs = Counter(task_id for task_id in waiting_job_task_ids(stack) if task_id in task_ids)
        missing = job_whereabouts(stack, task_ids - set(jobs))
        watched = {member.decode() for member in stack.redis().zrange(WATCH_KEY, 0, -1)}
        stored = Counter(document["_id"] for document in stack.tasks().find({"user_id": {"$in": users}}, {"_id": 1}))
        inflight = {user_id: stack.redis().scard(f"aitask:inflight:{user_id}") for user_id in users}
    finally:
        for task_id in task_ids:  # the restarted dispatcher drops their jobs instead of calling upstream
            stub.DeleteTask(pb.DeleteTaskRequest(task_id=task_id), timeout=10)
        stack.start("dispatcher")
    assert len(task_ids) == len(outcomes) == USERS * TASKS_PER_USER, Counter(map(str, outcomes))
    assert stored == dict.fromkeys(task_ids, 1)
    assert jobs == dict.fromkeys(task_ids, 1), missing
    assert task_ids <= watched
    assert inflight == dict.fromkeys(users, TASKS_PER_USER)
    wait_until(lambda: not task_ids & set(waiting_job_task_ids(stack)), timeout=60)


def test_concurrent_creates_with_one_key_make_one_task_whatever_else_shares_their_batch(
    stack: LocalStack, user_id: str
) -> None:
    stub = stack.task_stub(via_envoy=False)
    other_user = f"{user_id}-keyless"
    keyed = [image(user_id, prompt, key="shared") for prompt in ("red kite", "blue kite") * 8]
    keyless = [image(other_user, f"kite {n}") for n in range(12)]
    calls = [stub.CreateImageTask.future(request, timeout=30) for request in [*keyed, *keyless]]
    outcomes = [outcome(call) for call in calls]

    stored = list(stack.tasks().find({"user_id": user_id}))
    assert len(stored) == 1
    original = stored[0]
    for request, result in zip(keyed, outcomes, strict=False):
        # Same request as the one stored: its task; the other body: ALREADY_EXISTS.
        assert result == (original["_id"] if request.prompt == original["prompt"] else grpc.StatusCode.ALREADY_EXISTS)
    keyless_ids = set(outcomes[len(keyed) :])
    assert len(keyless_ids) == len(keyless)
    assert {document["_id"] for document in stack.tasks().find({"user_id": other_user})} == keyless_ids
