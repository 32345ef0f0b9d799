"""Settles the credit ledger (aitask_common/ledger.py) behind the tasks: every open reservation whose task is
final is settled at what the task cost or refunded (aitask_common/prices.py); one whose task was never stored
(its create died, or the database refused the task) is refunded after a grace period.

Run by the reconciler's pass, so a task's reservation is released within RECONCILE_INTERVAL_SECONDS of its end,
whichever process ended it (a worker, a cancel, a deadline, a reconciler) and whatever crashed meanwhile: the
ledger's keys make a release happen once however often it is tried.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pymongo.collection import Collection

from aitask_common.ledger import Ledger, Reason
from aitask_common.logging import get_logger
from aitask_common.metrics import CREDITS
from aitask_common.prices import charge
from aitask_common.tasks import TaskStatus, utcnow

log = get_logger(__name__)

# Reservations looked at per pass.
BATCH = 500
# A reservation whose task is missing this long after it was made belongs to a create that did not store it.
ORPHAN_GRACE = timedelta(minutes=2)
TASK_FIELDS = {"status": 1, "type": 1, "usage": 1, "billing": 1, "upstream_job_id": 1, "cancelled_from": 1}


def settle_final_tasks(ledger: Ledger, tasks: Collection[dict[str, Any]], limit: int = BATCH) -> int:
    """Release the reservations of final (or never stored) tasks; how many were released."""
    now = utcnow()
    reservations = ledger.open_reservations(now, limit)
    if not reservations:
        return 0
    found = {
        task["_id"]: task
        for task in tasks.find({"_id": {"$in": [reservation.task_id for reservation in reservations]}}, TASK_FIELDS)
    }
    released = 0
    for reservation in reservations:
        task = found.get(reservation.task_id)
        if task is None:
            if now - reservation.created < ORPHAN_GRACE:
                continue
            amount = None
        elif TaskStatus(task["status"]).is_final:
            amount = charge(task, reservation.amount)
        else:
            continue
        entry = ledger.release(reservation.task_id, amount)
        released += 1
        if entry is not None:
            kind = "settled" if entry.reason is Reason.SETTLE else "refunded"
            CREDITS.labels(kind, reservation.model).inc(-entry.amount if entry.reason is Reason.SETTLE else -entry.held)
    return released
