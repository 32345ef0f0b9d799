"""Billing tools: check the ledger adds up, grant credits.

    python -m dispatcher_service.billing_admin check          # exit 3 when anything is wrong
    python -m dispatcher_service.billing_admin grant USER AMOUNT [--note TEXT]

The check reads every user's ledger from its first entry: numbered without a gap, each entry's balance and
holds the running sums of the amounts before it, each task reserved at most once and released at most once
(never before its reservation), every reservation open in the ledger on a task still marked `billing_open`
(what the settlement pass reads), and no task final for longer than GRACE whose credit is still held.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from aitask_common.credit_holds import ADVANCE_SCRIPT, credit_key
from aitask_common.ledger import InsufficientCredit, Ledger, Reason, iterate_history
from aitask_common.mongo import client_options
from aitask_common.redis_clients import redis_client
from aitask_common.settings import load_settings
from aitask_common.tasks import BILLING_OPEN_FIELD, COLLECTION, TaskStatus, utcnow
from dispatcher_service.settings import DispatcherSettings

# A final task's reservation may stay open this long: the reconciler settles it within a pass or two.
GRACE = timedelta(minutes=2)
PROBLEMS_EXIT_CODE = 3


@dataclass
class CheckReport:
    users: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)


def check_ledger(
    ledger: Ledger, tasks: Collection[dict[str, Any]], grace: timedelta = GRACE, user_ids: list[str] | None = None
) -> CheckReport:
    """Every user's ledger (or `user_ids`'), and the tasks still holding credit."""
    report = CheckReport()
    query: dict[str, Any] = {BILLING_OPEN_FIELD: True} | ({"user_id": {"$in": user_ids}} if user_ids else {})
    holding = {task["_id"]: task for task in tasks.find(query, {"status": 1, "updated": 1})}
    open_holds: set[str] = set()
    for user_id in user_ids or ledger.all_user_ids():
        report.users += 1
        balance = reserved = 0
        reserves: dict[str, int] = {}
        released: set[str] = set()
        for number, entry in enumerate(iterate_history(ledger, user_id), start=1):
            report.entries += 1
            where = f"{user_id} entry {entry.seq}"
            if entry.seq != number:
                report.problems.append(f"{where}: expected number {number} (a gap)")
            balance, reserved = balance + entry.amount, reserved + entry.held
            if (entry.balance_after, entry.reserved_after) != (balance, reserved):
                report.problems.append(
                    f"{where}: says balance {entry.balance_after}, held {entry.reserved_after}; "
                    f"its entries add up to {balance}, {reserved}"
                )
            if entry.reason is Reason.RESERVE:
                if entry.task_id in reserves:
                    report.problems.append(f"{where}: task {entry.task_id} reserved twice")
                reserves[entry.task_id] = entry.held
            elif entry.reason in (Reason.SETTLE, Reason.REFUND):
                if entry.task_id not in reserves or entry.task_id in released:
                    report.problems.append(f"{where}: task {entry.task_id} released without an open reservation")
                elif -entry.held != reserves[entry.task_id]:
                    report.problems.append(
                        f"{where}: task {entry.task_id} released {-entry.held} of {reserves[entry.task_id]}"
                    )
                released.add(entry.task_id)
        holds = set(reserves) - released
        if sum(reserves[task_id] for task_id in holds) != reserved:
            report.problems.append(f"{user_id}: holds {reserved} credits, its open reservations add up to another sum")
        open_holds |= holds
    for task_id in sorted(open_holds - set(holding)):
        report.problems.append(f"task {task_id}: reservation open in the ledger, the task holds no credit")
    settled_by = utcnow() - grace
    for task_id, task in sorted(holding.items()):
        if TaskStatus(task["status"]).is_final and task["updated"] < settled_by:
            report.problems.append(f"task {task_id}: {task['status']} for over {grace}, its credit still held")
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dispatcher_service.billing_admin", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="every ledger adds up; no final task keeps its reservation (exit 3 if not)")
    grant = commands.add_parser("grant", help="add (or, negative, take) a user's credits")
    grant.add_argument("user_id")
    grant.add_argument("amount", type=int)
    grant.add_argument("--note", default="granted from the command line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings(DispatcherSettings, local_stack=True)
    with MongoClient(**client_options(settings, "billing-admin")) as mongo:
        database = mongo[settings.mongo_database]
        ledger = Ledger(database, settings.ledger_starting_credits)
        if args.command == "grant":
            try:
                entry = ledger.grant(args.user_id, args.amount, args.note)
            except InsufficientCredit as error:
                print(f"{args.user_id}: cannot take {error.cost} credits, {error.available} available", file=sys.stderr)
                return 2
            ledger.flush_accounts()
            # The user's credit hash in Redis moves on (a missing one is rebuilt from the ledger when next read).
            with redis_client(settings) as redis:
                redis.eval(ADVANCE_SCRIPT, 1, credit_key(args.user_id), entry.seq, entry.balance_after)
            print(
                f"{args.user_id}: {args.amount:+d} credits; balance {entry.balance_after}, held {entry.reserved_after}"
            )
            return 0
        report = check_ledger(ledger, database[COLLECTION])
        for problem in report.problems:
            print(problem)
        print(f"{report.users} users, {report.entries} entries: {len(report.problems) or 'no'} problems")
        return PROBLEMS_EXIT_CODE if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
