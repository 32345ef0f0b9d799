"""The settlement pass and the billing tools on the stack's FerretDB and Redis, in a database of their own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pymongo.database import Database
from redis import Redis

from aitask_common.credit_holds import credit_key
from aitask_common.ledger import Ledger, Reason, entry_id
from aitask_common.tasks import COLLECTION, utcnow
from devstack.stack import LocalStack
from dispatcher_service import billing_admin
from dispatcher_service.billing_admin import check_ledger
from dispatcher_service.settlement import ORPHAN_GRACE_MS, Settlement

IMAGE_PRICE = {"per_image": 26}
TEXT_PRICE = {"per_1k_input_tokens": 1000, "per_1k_output_tokens": 2000}
REDIS_DB = 9


@pytest.fixture
def redis(stack: LocalStack) -> Iterator[Redis]:
    client = Redis(port=stack.ports.redis, db=REDIS_DB)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def ledger(database: Database[dict[str, Any]]) -> Ledger:
    made = Ledger(database)
    made.ensure_indexes()
    return made


def granted(ledger: Ledger, redis: Redis, user_id: str, amount: int) -> None:
    """A user with `amount` credits, in the ledger and in their Redis hash (as the task service reads them)."""
    entry = ledger.grant(user_id, amount)
    redis.hset(credit_key(user_id), mapping={"seq": entry.seq, "balance": entry.balance_after, "held": 0})


def hold(redis: Redis, user_id: str, task_id: str, cost: int, at_ms: int | None = None) -> None:
    """What a create's reservation writes to the user's hash (task_service/limits.py)."""
    redis.hincrby(credit_key(user_id), "held", cost)
    redis.hset(credit_key(user_id), f"hold:{task_id}", f"{cost}:{at_ms or int(time.time() * 1000)}")


def forge_grant(ledger: Ledger, user_id: str, seq: int, balance_after: int, reserved_after: int) -> None:
    """A grant of 5 written behind the ledger's back, claiming balances its predecessors do not add up to."""
    ledger.entries.insert_one(
        {
            "_id": entry_id(user_id, seq),
            "user_id": user_id,
            "seq": seq,
            "key": "grant:forged",
            "reason": "grant",
            "amount": 5,
            "held": 0,
            "balance_after": balance_after,
            "reserved_after": reserved_after,
            "time": utcnow(),
        }
    )


def created_task(
    ledger: Ledger, redis: Redis, user_id: str, status: str, cost: int, task_type: str = "image", **fields: Any
) -> str:
    """A task whose create held `cost`, now in `status`."""
    task_id = uuid.uuid4().hex
    hold(redis, user_id, task_id, cost)
    price = TEXT_PRICE if task_type == "text" else IMAGE_PRICE
    ledger.entries.database[COLLECTION].insert_one(
        {
            "_id": task_id,
            "user_id": user_id,
            "type": task_type,
            "model": "m",
            "status": status,
            "billing": {"reserved": cost, "price": price},
            "billing_open": True,
            "updated": utcnow(),
            **fields,
        }
    )
    return task_id


def release_of(ledger: Ledger, user_id: str, task_id: str) -> tuple[Reason, int] | None:
    entry = ledger.entry(user_id, f"{task_id}:release")
    return None if entry is None else (entry.reason, entry.amount)


def held(redis: Redis, user_id: str) -> int:
    return int(redis.hget(credit_key(user_id), "held") or 0)


def test_the_pass_settles_final_tasks_at_what_they_cost_and_refunds_the_rest(
    ledger: Ledger, redis: Redis, user_id: str
) -> None:
    granted(ledger, redis, user_id, 10_000)
    tasks = ledger.entries.database[COLLECTION]
    completed = created_task(ledger, redis, user_id, "completed", 26)
    failed = created_task(ledger, redis, user_id, "failed", 26)
    cancelled_queued = created_task(ledger, redis, user_id, "cancelled", 26, cancelled_from="pending")
    cancelled_in_call = created_task(ledger, redis, user_id, "cancelled", 26, cancelled_from="processing")
    cancelled_video = created_task(ledger, redis, user_id, "cancelled", 150, "video", upstream_job_id="job-1")
    usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    text = created_task(ledger, redis, user_id, "completed", 500, "text", usage=usage)
    running = created_task(ledger, redis, user_id, "processing", 26)
    # A create that held credit and died before storing its task: dropped once the grace is over, not before.
    hold(redis, user_id, "never-stored", 26, at_ms=int(time.time() * 1000) - 2 * ORPHAN_GRACE_MS)
    hold(redis, user_id, "being-stored", 26)
    assert held(redis, user_id) == 26 * 7 + 150 + 500

    settlement = Settlement(ledger, tasks, redis)
    assert settlement.run_once() == 6
    assert release_of(ledger, user_id, completed) == (Reason.SETTLE, -26)
    assert release_of(ledger, user_id, failed) == (Reason.REFUND, 0)
    assert release_of(ledger, user_id, cancelled_queued) == (Reason.REFUND, 0)
    assert release_of(ledger, user_id, cancelled_in_call) == (Reason.SETTLE, -26)
    assert release_of(ledger, user_id, cancelled_video) == (Reason.SETTLE, -150)
    assert release_of(ledger, user_id, text) == (Reason.SETTLE, -50)  # 10 x 1000 / 1000 + 20 x 2000 / 1000
    # The running task's reservation is in the ledger; its credit is still held.
    assert release_of(ledger, user_id, running) is None and ledger.entry(user_id, f"{running}:reserve") is not None
    assert held(redis, user_id) == 26 + 26  # the running task's and the create still storing its task
    assert redis.hget(credit_key(user_id), "balance") == str(10_000 - 26 - 26 - 150 - 50).encode()
    account = ledger.account(user_id)
    assert (account.balance, account.reserved) == (10_000 - 26 - 26 - 150 - 50, 26)
    assert tasks.count_documents({"billing_open": True}) == 1
    # A second pass (another replica, a retry) changes nothing.
    assert settlement.run_once() == 0 and Settlement(ledger, tasks, redis).run_once() == 0
    assert ledger.account(user_id) == account and held(redis, user_id) == 52
    assert check_ledger(ledger, tasks).problems == []


def test_the_check_names_what_does_not_add_up(ledger: Ledger, redis: Redis, user_id: str) -> None:
    granted(ledger, redis, user_id, 100)
    tasks = ledger.entries.database[COLLECTION]
    stuck = created_task(ledger, redis, user_id, "completed", 26)
    tasks.update_one({"_id": stuck}, {"$set": {"updated": utcnow() - timedelta(hours=1)}})
    lost = created_task(ledger, redis, user_id, "processing", 10)
    ledger.reserve(user_id, lost, 10)
    tasks.update_one({"_id": lost}, {"$unset": {"billing_open": ""}})
    forge_grant(ledger, user_id, 3, balance_after=500, reserved_after=10)
    problems = check_ledger(ledger, tasks).problems
    assert len(problems) == 3, problems
    assert f"{user_id} entry 3: says balance 500, held 10; its entries add up to 105, 10" in problems
    assert f"task {lost}: reservation open in the ledger, the task holds no credit" in problems
    assert any(problem.startswith(f"task {stuck}: completed for over") for problem in problems)


def test_the_reconciler_checks_the_ledgers_its_passes_touched(ledger: Ledger, redis: Redis, user_id: str) -> None:
    granted(ledger, redis, user_id, 100)
    tasks = ledger.entries.database[COLLECTION]
    created_task(ledger, redis, user_id, "processing", 26)
    settlement = Settlement(ledger, tasks, redis)
    settlement.run_once()
    time.sleep(0.02)
    assert settlement.check_touched(0.01) == 0  # the grant and the reservation add up
    # An entry whose balance is not its predecessors' sum, under a task still holding credit.
    forge_grant(ledger, user_id, 3, balance_after=500, reserved_after=26)
    settlement.run_once()
    assert settlement.check_touched(3600) == 0  # not due yet
    found_before = REGISTRY.get_sample_value("aitask_ledger_problems_total") or 0
    time.sleep(0.02)
    assert settlement.check_touched(0.01) == 1
    assert REGISTRY.get_sample_value("aitask_ledger_problems_total") == found_before + 1
    settlement.run_once()
    time.sleep(0.02)
    assert settlement.check_touched(0) == 0  # 0 turns the check off


def test_the_command_grants_and_checks(
    database: Database[dict[str, Any]],
    redis: Redis,
    stack: LocalStack,
    user_id: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host, port = next(iter(database.client.nodes))
    monkeypatch.setenv("MONGO_URL", f"mongodb://{host}:{port}/")
    monkeypatch.setenv("MONGO_DATABASE", database.name)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{stack.ports.redis}/{REDIS_DB}")
    monkeypatch.setenv("ENVIRONMENT", "test")
    Ledger(database).ensure_indexes()
    redis.hset(credit_key(user_id), mapping={"seq": 0, "balance": 0, "held": 0})  # the user's creates read it
    assert billing_admin.main(["grant", user_id, "70", "--note", "welcome"]) == 0
    assert redis.hget(credit_key(user_id), "balance") == b"70"
    assert billing_admin.main(["grant", user_id, "-80"]) == 2
    assert billing_admin.main(["check"]) == 0
    output = capsys.readouterr()
    assert f"{user_id}: +70 credits; balance 70, held 0" in output.out
    assert "cannot take 80 credits, 70 available" in output.err
    assert "1 users, 1 entries: no problems" in output.out
    database["ledger"].update_one({}, {"$set": {"balance_after": 71}})
    assert billing_admin.main(["check"]) == billing_admin.PROBLEMS_EXIT_CODE
