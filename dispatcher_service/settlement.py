"""Settles credits behind the tasks, each reconciler pass (one replica at a time).

Every task still holding credit carries `billing_open` (an indexed equality MongoDB answers without reading the
collection). For each: its reserve entry goes to the ledger (aitask_common/ledger.py) the first pass that sees it;
once the task is final, its settle or refund (aitask_common/prices.py), then its hold leaves the user's Redis hash
(aitask_common/credit_holds.py), then `billing_open` goes. Each step is keyed, so a pass that dies anywhere is
finished by the next, and a task is charged once, whichever process ended it (a worker, a cancel, a deadline).

Holds whose create died before storing the task are dropped from the Redis hashes, a slice of them per pass.
Every LEDGER_CHECK_INTERVAL_SECONDS the ledgers of the users whose tasks held credit since the last check are
checked as `make billing-check` checks them all; what is wrong is logged and counted in aitask_ledger_problems_total.
"""

from __future__ import annotations

import time
from typing import Any

from cachetools import LRUCache
from prometheus_client import Gauge
from pymongo import UpdateOne
from pymongo.collection import Collection
from redis import Redis
from redis.cluster import RedisCluster

from aitask_common.credit_holds import (
    CREDIT_KEY_PREFIX,
    HOLD_PREFIX,
    RELEASE_SCRIPT,
    RELEASED_TOMBSTONE_MS,
    credit_key,
    parse_hold,
    released_key,
    user_of_credit_key,
)
from aitask_common.ledger import Ledger, Reason, release_posting, reserve_posting
from aitask_common.logging import get_logger
from aitask_common.metrics import CREDITS, LEDGER_PROBLEMS
from aitask_common.mongo import update_batches
from aitask_common.prices import charge
from aitask_common.tasks import BILLING_OPEN_FIELD, TaskStatus, task_filter
from dispatcher_service.billing_admin import check_ledger

log = get_logger(__name__)

# A hold whose task is not stored this long after the create made it belongs to a create that died.
ORPHAN_GRACE_MS = 2 * 60 * 1000
# Credit hashes looked at per pass for orphan holds.
ORPHAN_SCAN_COUNT = 200
# Tasks settled together: their ledger entries go in one insert a round, their `billing_open` in one update.
SETTLE_BATCH = 500
TASK_FIELDS = {
    "user_id": 1,
    "model": 1,
    "status": 1,
    "type": 1,
    "usage": 1,
    "billing": 1,
    "upstream_job_id": 1,
    "cancelled_from": 1,
}

LOW_CREDIT_USERS = Gauge(
    "aitask_credit_users_low", "Users with fewer credits available than LOW_CREDIT_THRESHOLD (read once a minute)"
)
# Problems logged one by one per check; the rest are counted.
LOGGED_PROBLEMS = 20
# The count reads every account (FerretDB filters `$lt` itself, after reading them all): once a minute, not a pass.
LOW_CREDIT_COUNT_SECONDS = 60.0


class Settlement:
    """One replica's settlement state: which tasks' reserve entries it has written, where its orphan scan is."""

    def __init__(self, ledger: Ledger, tasks: Collection[dict[str, Any]], redis: Redis) -> None:
        self.ledger = ledger
        self.tasks = tasks
        self.redis = redis
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._entered: LRUCache[str, bool] = LRUCache(maxsize=200_000)
        # Where the incremental SCAN of credit hashes stands: one cursor, or one per master on a Redis Cluster.
        self._scan_cursors: dict[str, int] = {}
        self._counted_at = 0.0
        # Users whose tasks held credit since the last ledger check.
        self._touched: set[str] = set()
        self._checked_at = time.monotonic()

    def count_low_credit_users(self, threshold: int) -> None:
        """Refresh aitask_credit_users_low, at most once per LOW_CREDIT_COUNT_SECONDS."""
        if time.monotonic() - self._counted_at >= LOW_CREDIT_COUNT_SECONDS:
            self._counted_at = time.monotonic()
            LOW_CREDIT_USERS.set(self.ledger.users_below(threshold))

    def check_touched(self, interval: float) -> int:
        """Check the ledgers of the users whose tasks held credit since the last check, at most once per
        `interval` seconds (0: never); how many problems it found."""
        if not interval or not self._touched or time.monotonic() - self._checked_at < interval:
            return 0
        self._checked_at = time.monotonic()
        users, self._touched = sorted(self._touched), set()
        report = check_ledger(self.ledger, self.tasks, user_ids=users)
        for problem in report.problems[:LOGGED_PROBLEMS]:
            log.error("ledger check: problem found", problem=problem)
        LEDGER_PROBLEMS.inc(len(report.problems))
        log.info("ledger check", users=report.users, entries=report.entries, problems=len(report.problems))
        return len(report.problems)

    def run_once(self) -> int:
        """Write new reserve entries, settle final tasks, drop orphan holds; how many tasks were settled."""
        settled = 0
        open_ids = set()
        batch: list[dict[str, Any]] = []
        try:
            for task in self.tasks.find({BILLING_OPEN_FIELD: True}, TASK_FIELDS):
                open_ids.add(task["_id"])
                self._touched.add(task["user_id"])
                batch.append(task)
                if len(batch) == SETTLE_BATCH:
                    settled, batch = settled + self._settle(batch), []
            settled += self._settle(batch)
        finally:
            self.ledger.flush_accounts()
        self._drop_orphans(open_ids)
        return settled

    def _settle(self, tasks: list[dict[str, Any]]) -> int:
        """The tasks' reserve entries not yet written, and for the final ones their releases, all in one ledger
        append; then each final task's hold leaves Redis, then `billing_open` leaves them all. How many settled."""
        postings = []
        opened = []  # tasks still running whose reserve entry this append writes
        releases = []  # where each final task's release stands among the postings
        for task in tasks:
            task_id, user_id, model = task["_id"], task["user_id"], task.get("model", "")
            reserved = task["billing"]["reserved"]
            if task_id not in self._entered:
                postings.append(reserve_posting(user_id, task_id, reserved, model))
            if TaskStatus(task["status"]).is_final:
                releases.append(len(postings))
                postings.append(release_posting(user_id, task_id, reserved, charge(task, reserved), model))
            elif task_id not in self._entered:
                opened.append(task_id)
        entries = self.ledger.append_many(
            postings, new_users=self._new_users({posting.user_id for posting in postings})
        )
        for task_id in opened:
            self._entered[task_id] = True
        for position in releases:
            release, entry = postings[position], entries[position]
            self._release(
                keys=[credit_key(release.user_id), released_key(release.user_id, release.task_id)],
                args=[release.task_id, entry.seq, entry.balance_after, RELEASED_TOMBSTONE_MS],
            )
            self._entered.pop(release.task_id, None)
            kind = "settled" if entry.reason is Reason.SETTLE else "refunded"
            CREDITS.labels(kind, release.model).inc(-entry.amount if entry.reason is Reason.SETTLE else -release.held)
        unset = {"$unset": {BILLING_OPEN_FIELD: ""}}
        ended = [UpdateOne(task_filter(postings[at].task_id, postings[at].user_id), unset) for at in releases]
        for batch in update_batches(ended):
            self.tasks.bulk_write(batch, ordered=False)
        return len(releases)

    def _new_users(self, user_ids: set[str]) -> set[str]:
        """Those of `user_ids` whose head the ledger would read and whose credit hash has seen no entry (a create
        built it at seq 0 for a user the ledger did not know): most likely still without one. One round trip."""
        unread = sorted(self.ledger.unread_users(user_ids))
        if not unread:
            return set()
        with self.redis.pipeline(transaction=False) as pipe:
            for user_id in unread:
                pipe.hget(credit_key(user_id), "seq")
            seqs = pipe.execute()
        return {user_id for user_id, seq in zip(unread, seqs, strict=True) if seq is not None and int(seq) == 0}

    def _scan_credit_keys(self) -> list[bytes | str]:
        """The next page of users' credit hashes, going on where the last page stopped (on each master)."""
        match = f"{CREDIT_KEY_PREFIX}*"
        if not isinstance(self.redis, RedisCluster):
            self._scan_cursors[""], keys = self.redis.scan(self._scan_cursors.get("", 0), match, ORPHAN_SCAN_COUNT)
            return list(keys)
        found: list[bytes | str] = []
        for node in self.redis.get_primaries():
            cursors, keys = self.redis.scan(
                self._scan_cursors.get(node.name, 0), match, ORPHAN_SCAN_COUNT, target_nodes=node
            )
            self._scan_cursors[node.name] = cursors[node.name]
            found += keys
        return found

    def _drop_orphans(self, open_ids: set[str]) -> None:
        """Holds older than the grace whose task holds no credit in MongoDB: a create died between its hold and
        its insert (a task settled since has left its hold already)."""
        keys = self._scan_credit_keys()
        stale_before = int(time.time() * 1000) - ORPHAN_GRACE_MS
        for raw_key in keys:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            for raw_field, value in self.redis.hgetall(key).items():
                field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
                if not field.startswith(HOLD_PREFIX):
                    continue
                task_id = field.removeprefix(HOLD_PREFIX)
                if task_id in open_ids or parse_hold(value)[1] > stale_before:
                    continue
                owner = user_of_credit_key(key)
                if self.tasks.find_one(task_filter(task_id, owner), {"_id": 1}) is None:
                    tombstone = released_key(owner, task_id)
                    self._release(keys=[key, tombstone], args=[task_id, 0, 0, RELEASED_TOMBSTONE_MS])
                    log.warning(
                        "dropped the credit hold of a task never stored", task_id=task_id, credits=parse_hold(value)[0]
                    )
