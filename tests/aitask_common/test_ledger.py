"""The credit ledger on the stack's FerretDB, in a database of its own: exact under concurrent writers (several
Ledger objects stand for several processes, each with threads), retried writes and a writer that died."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from aitask_common.ledger import (
    InsufficientCredit,
    Ledger,
    Posting,
    Reason,
    entry_id,
    iterate_history,
    release_posting,
    reserve_posting,
)
from aitask_common.tasks import utcnow
from devstack.stack import LocalStack


@pytest.fixture
def ledger(database: Database[dict[str, Any]]) -> Ledger:
    made = Ledger(database)
    made.ensure_indexes()
    return made


def assert_consistent(ledger: Ledger, user_id: str) -> None:
    """Numbered 1..n without a gap; each entry's balance and holds are the running sums; the account is the last."""
    balance = reserved = 0
    entries = list(iterate_history(ledger, user_id))
    for number, entry in enumerate(entries, start=1):
        balance, reserved = balance + entry.amount, reserved + entry.held
        assert (entry.seq, entry.balance_after, entry.reserved_after) == (number, balance, reserved)
    account = Ledger(ledger.entries.database).account(user_id)  # a reader that wrote nothing
    assert (account.seq, account.balance, account.reserved) == (len(entries), balance, reserved)


def test_reserve_settle_and_refund_move_the_balance_and_the_holds(ledger: Ledger, user_id: str) -> None:
    ledger.grant(user_id, 100, note="welcome")
    ledger.reserve(user_id, "task-a", 30, model="m")
    ledger.reserve(user_id, "task-b", 50, model="m")
    account = ledger.account(user_id)
    assert (account.balance, account.reserved, account.available) == (100, 80, 20)
    settled = ledger.release(user_id, "task-a", 30, charge=25)
    refunded = ledger.release(user_id, "task-b", 50, charge=None)
    assert (settled.reason, settled.amount, settled.held) == (Reason.SETTLE, -25, -30)
    assert (refunded.reason, refunded.amount, refunded.held) == (Reason.REFUND, 0, -50)
    account = ledger.account(user_id)
    assert (account.balance, account.reserved) == (75, 0)
    assert [entry.reason for entry in ledger.history(user_id, limit=10)] == [
        Reason.REFUND,
        Reason.SETTLE,
        Reason.RESERVE,
        Reason.RESERVE,
        Reason.GRANT,
    ]
    assert_consistent(ledger, user_id)


def test_a_grant_takes_only_what_is_available(ledger: Ledger, user_id: str) -> None:
    ledger.grant(user_id, 10)
    ledger.reserve(user_id, "task-x", 4)
    with pytest.raises(InsufficientCredit) as refused:
        ledger.grant(user_id, -7)
    assert (refused.value.cost, refused.value.available) == (7, 6)
    assert "costs 7 credits, 6 available" in str(refused.value)
    assert ledger.account(user_id).seq == 2
    ledger.grant(user_id, -6)
    assert ledger.account(user_id).available == 0


def test_a_task_is_released_once_whatever_asks_again(ledger: Ledger, user_id: str) -> None:
    ledger.grant(user_id, 100)
    first = ledger.reserve(user_id, "task-a", 40)
    assert ledger.reserve(user_id, "task-a", 40) == first  # a second pass
    settled = ledger.release(user_id, "task-a", 40, charge=40)
    # A duplicate pass, another replica, a cancel: each finds the release written.
    assert ledger.release(user_id, "task-a", 40, charge=40) == settled
    assert ledger.release(user_id, "task-a", 40, charge=None) == settled
    assert (ledger.account(user_id).balance, ledger.account(user_id).reserved) == (60, 0)
    # A task whose reserve entry was never written (it ended within a pass): both are written, in order.
    refunded = ledger.release(user_id, "task-b", 30, charge=None)
    assert [entry.reason for entry in ledger.history(user_id, limit=2)] == [Reason.REFUND, Reason.RESERVE]
    assert refunded.reserved_after == 0
    assert_consistent(ledger, user_id)


def test_concurrent_writers_number_every_entry_once(
    database: Database[dict[str, Any]], ledger: Ledger, user_id: str
) -> None:
    ledger.grant(user_id, 1000)
    processes = [Ledger(database) for _ in range(3)]  # each with its own locks and cached heads

    def settle(process: Ledger, thread: int) -> None:
        for n in range(10):
            task_id = f"task-{n}"  # every thread settles the same ten tasks: each is written once
            process.reserve(user_id, task_id, 10)
            process.release(user_id, task_id, 10, charge=n)
        process.flush_accounts()

    threads = [threading.Thread(target=settle, args=(processes[n % 3], n)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    account = ledger.account(user_id)
    assert (account.balance, account.reserved, account.seq) == (1000 - sum(range(10)), 0, 21)
    assert_consistent(ledger, user_id)


def test_an_entry_written_by_a_writer_that_died_is_rolled_forward(
    database: Database[dict[str, Any]], ledger: Ledger, user_id: str
) -> None:
    ledger.grant(user_id, 50)
    ledger.flush_accounts()
    # A process inserted entry 2 and died before moving the account document on.
    ledger.entries.insert_one(
        {
            "_id": entry_id(user_id, 2),
            "user_id": user_id,
            "seq": 2,
            "key": "grant:late",
            "reason": "grant",
            "amount": 25,
            "held": 0,
            "balance_after": 75,
            "reserved_after": 0,
            "time": utcnow(),
        }
    )
    fresh = Ledger(database)
    assert fresh.account(user_id).balance == 75
    # The writer that cached entry 1 as the newest loses number 2, rolls forward and writes 3.
    assert ledger.reserve(user_id, "task-a", 75).seq == 3
    assert fresh.account(user_id).available == 0
    assert_consistent(fresh, user_id)


def test_the_starting_grant_is_written_once(database: Database[dict[str, Any]], user_id: str) -> None:
    processes = [Ledger(database, starting_credits=1000) for _ in range(4)]
    processes[0].ensure_indexes()
    assert processes[0].account(user_id).balance == 1000  # before any entry
    threads = [
        threading.Thread(target=process.reserve, args=(user_id, f"task-{n}", 10)) for n, process in enumerate(processes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = list(iterate_history(processes[0], user_id))
    assert [entry.reason for entry in entries].count(Reason.GRANT) == 1 and entries[0].amount == 1000
    assert processes[0].account(user_id).available == 960
    assert_consistent(processes[0], user_id)


class CommandLog(monitoring.CommandListener):
    """The commands a client sent, as (command, collection)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append((event.command_name, event.command[event.command_name]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_new_user_costs_two_reads_and_reads_nothing_after_its_own_writes(
    stack: LocalStack, database: Database[dict[str, Any]], user_id: str
) -> None:
    Ledger(database).ensure_indexes()
    commands = CommandLog()
    with MongoClient(stack.env["MONGO_URL"], tz_aware=True, event_listeners=[commands]) as client:
        ledger = Ledger(client[database.name], starting_credits=1000)
        ledger.release(user_id, "task-a", 10, charge=10)  # the settlement of a user's first task
        # Its account and entry 1 are read once (neither exists); the starting grant, the reserve and the release
        # are inserted after the head this process wrote, with no read in between.
        assert commands.sent == [
            ("find", "accounts"),
            ("find", "ledger"),
            ("insert", "ledger"),
            ("insert", "ledger"),
            ("insert", "ledger"),
        ]
    account = Ledger(database).account(user_id)
    assert (account.seq, account.balance, account.reserved) == (3, 990, 0)
    assert_consistent(Ledger(database), user_id)


def settlement_postings(user_id: str, tasks: range, charge: int | None = 5) -> list[Posting]:
    """Each task's reserve of 10 credits, then its release."""
    postings = []
    for n in tasks:
        postings += [reserve_posting(user_id, f"task-{n}", 10), release_posting(user_id, f"task-{n}", 10, charge)]
    return postings


def test_a_batch_writes_each_users_entries_in_order_one_insert_a_round(
    stack: LocalStack, database: Database[dict[str, Any]]
) -> None:
    Ledger(database).ensure_indexes()
    users = [f"user-batch-{n}" for n in range(3)]
    commands = CommandLog()
    with MongoClient(stack.env["MONGO_URL"], tz_aware=True, event_listeners=[commands]) as client:
        ledger = Ledger(client[database.name], starting_credits=100)
        # Users interleaved: the first has two tasks, the others one each; the third's is refunded.
        postings = (
            settlement_postings(users[0], range(2))
            + settlement_postings(users[1], range(1))
            + settlement_postings(users[2], range(1), charge=None)
        )
        entries = ledger.append_many(postings)
        inserts = [command for command in commands.sent if command == ("insert", "ledger")]
    assert [(entry.user_id, entry.key) for entry in entries] == [(p.user_id, p.key) for p in postings]
    # Each user's starting grant, then their entries: the first user's five entries take five rounds.
    assert len(inserts) == 5
    for user_id, balance in zip(users, (90, 95, 100), strict=True):
        assert_consistent(Ledger(database), user_id)
        account = Ledger(database).account(user_id)
        assert (account.balance, account.reserved) == (balance, 0)


def test_a_batch_reads_no_head_of_a_user_said_to_be_new_and_a_wrong_word_costs_reads_only(
    stack: LocalStack, database: Database[dict[str, Any]], user_id: str
) -> None:
    newcomer, regular = f"{user_id}-new", f"{user_id}-regular"
    Ledger(database).ensure_indexes()
    Ledger(database).grant(regular, 100)  # by another process: this one has never seen the user
    commands = CommandLog()
    with MongoClient(stack.env["MONGO_URL"], tz_aware=True, event_listeners=[commands]) as client:
        ledger = Ledger(client[database.name], starting_credits=1000)
        postings = settlement_postings(newcomer, range(1)) + settlement_postings(regular, range(1))
        entries = ledger.append_many(postings, new_users={newcomer, regular})
    # Only the regular's head was read, after their entry 1 turned out taken: their account, entries 1 and 2.
    assert commands.sent.count(("find", "accounts")) == 1
    assert commands.sent.count(("find", "ledger")) == 2
    assert [(entry.user_id, entry.seq) for entry in entries] == [
        (newcomer, 2),
        (newcomer, 3),
        (regular, 2),
        (regular, 3),
    ]
    keys = [entry.key for entry in iterate_history(Ledger(database), regular)]
    assert len(keys) == 3 and f"grant:start:{regular}" not in keys  # the grant they had, then the task's two
    assert (Ledger(database).account(newcomer).balance, Ledger(database).account(regular).balance) == (995, 95)
    for owner in (newcomer, regular):
        assert_consistent(Ledger(database), owner)


def test_a_batch_whose_number_another_writer_took_finishes_that_user_alone(
    database: Database[dict[str, Any]], ledger: Ledger, user_id: str
) -> None:
    other_user = f"{user_id}-other"
    ledger.grant(user_id, 100)
    ledger.grant(other_user, 100)
    # Another process writes entry 2 of the user behind this process's back: its cached head (entry 1) is stale.
    Ledger(database).grant(user_id, 7, grant_id="elsewhere")
    postings = settlement_postings(user_id, range(2)) + settlement_postings(other_user, range(2))
    entries = ledger.append_many(postings)
    assert [entry.seq for entry in entries] == [3, 4, 5, 6, 2, 3, 4, 5]
    assert (ledger.account(user_id).balance, ledger.account(other_user).balance) == (97, 90)
    for owner in (user_id, other_user):
        assert_consistent(ledger, owner)


def test_a_batch_finds_entries_written_before_and_writes_them_no_more(ledger: Ledger, user_id: str) -> None:
    ledger.grant(user_id, 100)
    reserved = ledger.reserve(user_id, "task-0", 10)  # an earlier pass, before this process lost its memory
    fresh = Ledger(ledger.entries.database)
    entries = fresh.append_many(settlement_postings(user_id, range(2)))
    assert entries[0] == reserved
    assert [entry.key for entry in iterate_history(ledger, user_id)][1:] == [
        "task-0:reserve",
        "task-0:release",
        "task-1:reserve",
        "task-1:release",
    ]
    assert fresh.append_many(settlement_postings(user_id, range(2))) == entries  # a whole pass again: nothing new
    assert (fresh.account(user_id).seq, fresh.account(user_id).balance) == (5, 90)
    assert_consistent(fresh, user_id)


def test_concurrent_batches_write_every_entry_once(database: Database[dict[str, Any]], ledger: Ledger) -> None:
    users = [f"user-race-{n}" for n in range(4)]
    processes = [Ledger(database, starting_credits=1000) for _ in range(3)]

    def settle(process: Ledger) -> None:
        # Every replica settles the same tasks of the same users, in batches that overlap.
        for start in range(0, 12, 3):
            process.append_many(
                [posting for user_id in users for posting in settlement_postings(user_id, range(start, start + 4))]
            )
        process.flush_accounts()

    threads = [threading.Thread(target=settle, args=(processes[n % 3],)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for user_id in users:
        entries = list(iterate_history(ledger, user_id))
        assert len(entries) == 1 + 2 * 13  # the starting grant, then tasks 0..12, each reserved and released once
        assert len({entry.key for entry in entries}) == len(entries)
        assert Ledger(database).account(user_id).balance == 1000 - 5 * 13
        assert_consistent(ledger, user_id)


def test_a_batch_refuses_grants(ledger: Ledger, user_id: str) -> None:
    with pytest.raises(ValueError, match="grant"):
        ledger.append_many([Posting(user_id, "grant:x", Reason.GRANT, amount=-5, held=0)])
    assert ledger.account(user_id).seq == 0
