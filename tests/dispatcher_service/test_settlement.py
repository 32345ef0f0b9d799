"""The settlement pass on the stack's FerretDB and Redis, in a database of its own: a pass over many tasks of many
users writes their ledger entries in one insert a round and unsets `billing_open` in bulk writes small enough for
FerretDB (aitask_common.mongo.UPDATE_STATEMENTS_MAX: a larger update command once stopped FerretDB), and settles
each task once."""

from __future__ import annotations

import time
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from aitask_common.credit_holds import HOLD_PREFIX, credit_key
from aitask_common.ledger import Ledger, Reason, iterate_history
from aitask_common.mongo import UPDATE_STATEMENTS_MAX
from aitask_common.tasks import BILLING_OPEN_FIELD, utcnow
from devstack.stack import LocalStack
from dispatcher_service.settlement import Settlement
from tests.aitask_common.test_ledger import CommandLog, assert_consistent

USERS = 60
TASKS_PER_USER = 2
RESERVED = 10


def task(user_id: str, number: int, status: str) -> dict[str, Any]:
    return {
        "_id": f"{user_id}-task-{number}",
        "user_id": user_id,
        "model": "doubao-seedream-3-0-t2i-250415",
        "type": "image",
        "status": status,
        "created": utcnow(),
        "billing": {"reserved": RESERVED},
        BILLING_OPEN_FIELD: True,
    }


def test_a_pass_over_many_users_settles_each_task_once_in_few_commands(
    stack: LocalStack, database: Database[dict[str, Any]], user_id: str
) -> None:
    users = [f"{user_id}-{n}" for n in range(USERS)]
    # The first task of each user ended (one in three failed: refunded), the second still runs.
    tasks = [task(owner, 0, "failed" if n % 3 == 0 else "completed") for n, owner in enumerate(users)]
    tasks += [task(owner, 1, "processing") for owner in users]
    database["tasks"].insert_many(tasks)
    Ledger(database).ensure_indexes()
    redis = stack.redis()
    # Each user's credit hash as their first create built it, the ledger knowing nothing of them (seq 0); the
    # last user's is gone (a Redis restart), so only their head is read.
    for owner in users[:-1]:
        # Made now: the stack's own dispatcher, sharing this Redis, drops old holds of tasks not in its database.
        holds = {f"{HOLD_PREFIX}{owner}-task-{number}": f"{RESERVED}:{int(time.time() * 1000)}" for number in (0, 1)}
        redis.hset(credit_key(owner), mapping={"seq": 0, "balance": 1000, "held": 2 * RESERVED} | holds)
    commands = CommandLog()
    sizes: list[int] = []

    class Sizes(CommandLog):
        def started(self, event: Any) -> None:
            if event.command_name == "update":
                sizes.append(len(event.command["updates"]))

    # A timeout: an update command too large for FerretDB hangs it rather than failing.
    with MongoClient(
        stack.env["MONGO_URL"], tz_aware=True, socketTimeoutMS=20_000, event_listeners=[commands, Sizes()]
    ) as client:
        own = client[database.name]
        settlement = Settlement(Ledger(own, starting_credits=1000), own["tasks"], redis)
        assert settlement.run_once() == USERS
        # Rounds, not tasks: each user's starting grant, the ended task's reserve and release, the running one's
        # reserve, across every user at once.
        assert commands.sent.count(("insert", "ledger")) == 4
        assert (commands.sent.count(("find", "accounts")), commands.sent.count(("find", "ledger"))) == (1, 1)
        assert sizes and max(sizes) <= UPDATE_STATEMENTS_MAX
        # The ended tasks' `billing_open` and the accounts moved on, a slice a command.
        assert len(sizes) == 2 * -(-USERS // UPDATE_STATEMENTS_MAX)
        assert settlement.run_once() == 0  # a second pass: only the running tasks hold credit, entered already
    assert database["tasks"].count_documents({BILLING_OPEN_FIELD: True}) == USERS
    for n, owner in enumerate(users):
        keys = [entry.key for entry in iterate_history(Ledger(database), owner)]
        assert keys[0] == f"grant:start:{owner}" and len(keys) == 4, keys
        assert keys.index(f"{owner}-task-0:reserve") < keys.index(f"{owner}-task-0:release")
        assert f"{owner}-task-1:reserve" in keys
        ended = Ledger(database).entry(owner, f"{owner}-task-0:release")
        assert ended is not None and ended.reason is (Reason.REFUND if n % 3 == 0 else Reason.SETTLE)
        assert_consistent(Ledger(database), owner)
        account = Ledger(database).account(owner)
        assert (account.balance, account.reserved) == (1000 if n % 3 == 0 else 1000 - RESERVED, RESERVED)
        if owner != users[-1]:  # the hash moved on to the release, and holds the running task only
            assert redis.hmget(credit_key(owner), ["seq", "balance", "held"]) == [
                b"3",
                str(account.balance).encode(),
                str(RESERVED).encode(),
            ]
    redis.delete(*(credit_key(owner) for owner in users))
