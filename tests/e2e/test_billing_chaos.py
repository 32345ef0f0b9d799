"""The ledger's invariant under chaos (issue 21): 2,000 mixed tasks from 100 users with random cancels, the
simulator failing a fifth of the image calls, the dispatcher SIGKILLed twice and Redis restarted empty once.
Afterwards, for every user: the ledger adds up (billing-check), each task has one reserve and one release at what
it cost, the balance is the grants minus the settled charges, and nothing is held."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from aitask_common.credit_holds import credit_key
from aitask_common.ledger import Ledger, Reason, iterate_history
from devstack.stack import LocalStack
from dispatcher_service.billing_admin import check_ledger
from tests.conftest import wait_until
from tests.e2e.helpers import ensure_running, faults, restart_after_a_crash, waiting_job_task_ids
from tests.e2e.test_billing import PRICES

USERS = 100
TASKS_PER_USER = 20
STARTING = 1_000_000_000  # devstack's STARTING_CREDITS
KINDS = [
    ("image", {"provider": "volcengine", "model": "doubao-seedream-3-0-t2i-250415"}, 0.45),
    ("image", {"provider": "volcengine", "model": "jimeng_high_aes_general_v21_L"}, 0.15),
    ("text", {"provider": "volcengine", "model": "doubao-pro-4k", "max_tokens": 100}, 0.25),
    ("video", {"provider": "volcengine", "model": "jimeng_vgfm_t2v_l20"}, 0.15),
]
CANCEL_SHARE = 0.15


class Load:
    """Creates every task (retrying through the outages with the same idempotency key) and cancels some at once,
    while they wait in the queue or run."""

    def __init__(self, stack: LocalStack, users: list[str], seed: int) -> None:
        self.stack = stack
        self.users = users
        self.random = random.Random(seed)
        self.created: list[str] = []
        self.lock = threading.Lock()

    def create_all(self) -> None:
        plan = [(user, n) for user in self.users for n in range(TASKS_PER_USER)]
        self.random.shuffle(plan)
        kinds = self.random.choices(KINDS, weights=[share for *_, share in KINDS], k=len(plan))
        cancels = [self.random.random() < CANCEL_SHARE for _ in plan]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._create, plan, kinds, cancels))

    def _create(self, slot: tuple[str, int], kind: tuple[str, dict[str, Any], float], cancel: bool) -> None:
        (user_id, number), (path, fields, _) = slot, kind
        body = {"prompt": f"ledger chaos {user_id} {number}", "user_id": user_id, **fields}
        headers = {"Idempotency-Key": f"chaos-{user_id}-{number}"}
        with self.stack.rest() as rest:
            for _ in range(600):
                try:
                    response = rest.post(f"/api/v1/ai/{path}/task", json=body, headers=headers)
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                if response.status_code == 200:
                    task_id = response.json()["data"]["task_id"]
                    with self.lock:
                        self.created.append(task_id)
                    if cancel:
                        with contextlib.suppress(httpx.HTTPError):  # an outage: it runs to its end instead
                            rest.post(f"/api/v1/ai/task/{task_id}/cancel", json={})
                    return
                assert response.status_code in (429, 502, 503), response.text
                time.sleep(0.2)
        raise AssertionError(f"task {user_id} {number} never created")


def expected_charge(task: dict[str, Any]) -> int:
    """What a final task should have cost, from the catalogue's prices (README "Credits")."""
    price = PRICES[(task["provider"], task["model"])]
    reserved = task["billing"]["reserved"]
    if task["status"] == "failed":
        return 0
    if task["status"] == "cancelled":
        reached_vendor = task.get("upstream_job_id") or task.get("cancelled_from") == "processing"
        return reserved if reached_vendor else 0
    if task["type"] == "text":
        usage = task["usage"]
        tokens = (
            usage["prompt_tokens"] * price.per_1k_input_tokens + usage["completion_tokens"] * price.per_1k_output_tokens
        )
        return math.ceil(tokens / 1000)
    return price.per_image or price.per_video


def test_the_ledger_adds_up_after_kills_outages_failures_and_cancels(stack: LocalStack) -> None:
    users = [f"chaos-{uuid.uuid4().hex[:8]}-{n}" for n in range(USERS)]
    load = Load(stack, users, seed=21)
    creates = threading.Thread(target=load.create_all)
    try:
        with faults(stack, "ark.images", error_rate=0.2, error_status=400):
            creates.start()
            for target in (400, 900, 1400):
                wait_until(lambda target=target: len(load.created) >= target, timeout=180)
                if target == 900:
                    stack.restart_redis_empty()
                else:
                    stack.stop("dispatcher", signal.SIGKILL)
                    restart_after_a_crash(stack)
            creates.join(timeout=600)
            assert not creates.is_alive() and len(load.created) == USERS * TASKS_PER_USER
            tasks = stack.tasks()
            wait_until(
                lambda: (
                    tasks.count_documents({"user_id": {"$in": users}, "status": {"$in": ["pending", "processing"]}})
                    == 0
                ),
                timeout=300,
                interval=1,
            )
    finally:
        ensure_running(stack, "redis", "dispatcher")
    # Settled within a pass or two of the last task's end.
    wait_until(lambda: tasks.count_documents({"user_id": {"$in": users}, "billing_open": True}) == 0, timeout=60)

    ledger = Ledger(stack.mongo()["aitask"])
    report = check_ledger(ledger, tasks, user_ids=users)
    assert report.problems == [] and report.users == USERS
    redis = stack.redis()
    statuses: dict[str, int] = {}
    for user_id in users:
        entries = list(iterate_history(ledger, user_id))
        user_tasks = {task["_id"]: task for task in tasks.find({"user_id": user_id})}
        assert len(user_tasks) == TASKS_PER_USER  # no create was stored twice
        by_task: dict[str, list[Any]] = {}
        for entry in entries:
            by_task.setdefault(entry.task_id, []).append(entry)
        grants = sum(entry.amount for entry in by_task.pop("", []))
        assert grants == STARTING
        assert set(by_task) == set(user_tasks)
        charged = 0
        for task_id, (reserve, release) in by_task.items():
            task = user_tasks[task_id]
            statuses[task["status"]] = statuses.get(task["status"], 0) + 1
            assert reserve.reason is Reason.RESERVE and reserve.held == task["billing"]["reserved"]
            cost = expected_charge(task)
            assert release.held == -reserve.held and -release.amount == cost, task
            settled = task["status"] == "completed" or cost > 0
            assert release.reason is (Reason.SETTLE if settled else Reason.REFUND), task
            charged += cost
        account = ledger.account(user_id)
        assert (account.balance, account.reserved) == (STARTING - charged, 0)
        credits = redis.hgetall(credit_key(user_id))
        assert (int(credits[b"balance"]), int(credits[b"held"])) == (account.balance, 0)
        assert not [field for field in credits if field.startswith(b"hold:")]
    # The run covered every ending: completed, failed (the simulator's 400s) and cancelled.
    assert all(statuses.get(status, 0) > 20 for status in ("completed", "failed", "cancelled")), statuses
    # The cancelled tasks' jobs drain too: none is left to meet a deleted task.
    created = set(load.created)
    wait_until(lambda: not created & set(waiting_job_task_ids(stack)), timeout=60)
    # 2,000 tasks and their ledgers would slow every later test's queries that FerretDB filters by reading all.
    tasks.delete_many({"user_id": {"$in": users}})
    ledger.entries.delete_many({"user_id": {"$in": users}})
    ledger.accounts.delete_many({"_id": {"$in": users}})
    redis.delete(*(credit_key(user_id) for user_id in users))
