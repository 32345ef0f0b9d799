"""Credits per user: an append-only ledger whose every entry is written exactly once.

FerretDB 1.x applies an update by reading the document and writing it back, so two concurrent conditional
updates of one document can both succeed (measured: 4 threads moving 300 documents from one status to another
each, 215 moved twice). A unique index is the one guard it enforces atomically (PostgreSQL's). So the ledger
is written by inserts only:

- Each user's entries are numbered: entry n has `_id` "<user>:<n>". Appending n+1 is an insert that only one
  writer can win; the loser re-reads the head and decides again (the balance check included).
- Each entry has a `key` unique among its user's: "<task>:reserve", "<task>:release" (a settle and a refund share
  it, so a task is settled or refunded once, never both), "grant:<id>". A retried write finds its key taken and
  stops. Unique per user, not overall: a task has one user, and on a MongoDB sharded by user (the ledger's shard
  key, aitask_common.sharding) a unique index must start with the shard key. Every query names the user.
- An entry carries the balance and the reservations after it, so the newest entry is the account. The
  `accounts` document only says where to start looking (it may lag; never lead): readers roll forward.

The create path never waits for this ledger: it holds credit in Redis (task_service/credits.py), and marks the
task `billing_open`; the dispatcher's settlement pass (dispatcher_service/settlement.py) writes the task's
reserve entry, and once the task is final its settle or refund.

Amounts are integer credits. `balance` is what the user owns (grants minus settled charges); `reserved` is held
by running tasks; a create may reserve up to `balance - reserved`.
"""

from __future__ import annotations

import threading
import uuid
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence, Set
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from cachetools import LRUCache
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from aitask_common.mongo import DUPLICATE_KEY, update_batches
from aitask_common.sharding import owned_by
from aitask_common.tasks import utcnow

ENTRIES = "ledger"
ACCOUNTS = "accounts"
SEQ_DIGITS = 12
# Appends racing for one user's next number give up after this many rounds (each round lost to a writer
# that succeeded, so the ledger moved on).
MAX_ROUNDS = 1000
# Appends of one user in one process take turns on one of these locks (by a hash of the user).
LOCK_STRIPES = 64
# Users whose newest entry this process remembers (a forgotten one is read from `accounts` again).
HEADS_CACHED = 100_000


# How a create short of credit is refused: FAILED_PRECONDITION carrying a google.rpc.ErrorInfo with this reason
# in the status details (task_service/billing.py); the gateway answers it 402, the OpenAI door 429
# insufficient_quota.
PAYMENT_REQUIRED = "PAYMENT_REQUIRED"
STATUS_DETAILS = "grpc-status-details-bin"


class Reason(StrEnum):
    GRANT = "grant"
    RESERVE = "reserve"
    SETTLE = "settle"
    REFUND = "refund"


class InsufficientCredit(Exception):
    """A reservation larger than the credits available; nothing was written."""

    def __init__(self, user_id: str, cost: int, available: int) -> None:
        super().__init__(f"insufficient credit: this task costs {cost} credits, {available} available")
        self.user_id = user_id
        self.cost = cost
        self.available = available


@dataclass(frozen=True)
class Account:
    """A user's credits after their newest entry (`seq`, 0 before any)."""

    user_id: str
    seq: int
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True)
class Entry:
    """One ledger line: `amount` changes the balance, `held` the reservations."""

    user_id: str
    seq: int
    key: str
    reason: Reason
    amount: int
    held: int
    balance_after: int
    reserved_after: int
    time: datetime
    task_id: str = ""
    model: str = ""
    note: str = ""

    @property
    def account(self) -> Account:
        """The user's credits after this entry."""
        return Account(self.user_id, self.seq, self.balance_after, self.reserved_after)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Entry:
        return cls(
            user_id=document["user_id"],
            seq=document["seq"],
            key=document["key"],
            reason=Reason(document["reason"]),
            amount=document["amount"],
            held=document["held"],
            balance_after=document["balance_after"],
            reserved_after=document["reserved_after"],
            time=document["time"],
            task_id=document.get("task_id", ""),
            model=document.get("model", ""),
            note=document.get("note", ""),
        )


@dataclass(frozen=True)
class Posting:
    """An entry to append: `key` is unique among the user's entries, so it is written once."""

    user_id: str
    key: str
    reason: Reason
    amount: int
    held: int
    task_id: str = ""
    model: str = ""
    note: str = ""


def reserve_posting(user_id: str, task_id: str, cost: int, model: str = "") -> Posting:
    """The entry of the hold a task's create made."""
    return Posting(user_id, f"{task_id}:reserve", Reason.RESERVE, amount=0, held=cost, task_id=task_id, model=model)


def release_posting(user_id: str, task_id: str, reserved: int, charge: int | None, model: str = "") -> Posting:
    """The entry that ends a task's hold: a charge of `charge` credits (settle), or none when None (refund). A
    settle and a refund share the key, so a task gets one of them."""
    reason = Reason.REFUND if charge is None else Reason.SETTLE
    return Posting(
        user_id, f"{task_id}:release", reason, amount=-(charge or 0), held=-reserved, task_id=task_id, model=model
    )


def entry_id(user_id: str, seq: int) -> str:
    return f"{user_id}:{seq:0{SEQ_DIGITS}d}"


class Ledger:
    """Reads and appends one deployment's ledger (synchronous; the task service calls it in a thread)."""

    def __init__(self, database: Database[dict[str, Any]], starting_credits: int = 0) -> None:
        self.entries: Collection[dict[str, Any]] = database[ENTRIES]
        self.accounts: Collection[dict[str, Any]] = database[ACCOUNTS]
        # Every user's first entry is a grant of this many credits (0: none).
        self.starting_credits = starting_credits
        # Appends of one user in this process take turns (losing races to ourselves would waste round trips);
        # other processes are ordered by the entry numbers.
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._heads: LRUCache[str, Account] = LRUCache(maxsize=HEADS_CACHED)
        # Users whose `accounts` document is behind their newest entry (written by flush_accounts).
        self._behind: dict[str, Account] = {}
        self._behind_guard = threading.Lock()

    def ensure_indexes(self) -> None:
        self.entries.create_index([("user_id", ASCENDING), ("key", ASCENDING)], unique=True)
        self.entries.create_index([("user_id", ASCENDING), ("seq", DESCENDING)])

    # --- reads -------------------------------------------------------------------------------------------------
    def account(self, user_id: str) -> Account:
        """The user's credits now (a user never seen has the starting credits)."""
        head = self._roll_forward(user_id, self._known_head(user_id))
        if head.seq == 0 and self.starting_credits:
            return Account(user_id, 0, self.starting_credits, 0)
        return head

    def history(self, user_id: str, limit: int, offset: int = 0) -> list[Entry]:
        """The user's entries, newest first."""
        cursor = self.entries.find({"user_id": user_id}).sort("seq", DESCENDING).skip(offset).limit(limit)
        return [Entry.from_document(document) for document in cursor]

    def entry(self, user_id: str, key: str) -> Entry | None:
        document = self.entries.find_one({"key": key} | owned_by(user_id))
        return Entry.from_document(document) if document is not None else None

    def users_below(self, credits: int) -> int:
        """How many users have fewer than `credits` available (as of their account documents, which may lag)."""
        return self.accounts.count_documents({"available": {"$lt": credits}})

    def all_user_ids(self) -> list[str]:
        return sorted(self.entries.distinct("user_id"))

    # --- writes ------------------------------------------------------------------------------------------------
    def grant(self, user_id: str, amount: int, note: str = "", grant_id: str = "") -> Entry:
        """Add (or, negative, take) credits; `grant_id` makes a retried grant a no-op."""
        key = f"grant:{grant_id or uuid.uuid4().hex}"
        return self._append(Posting(user_id, key, Reason.GRANT, amount=amount, held=0, note=note))

    def reserve(self, user_id: str, task_id: str, cost: int, model: str = "") -> Entry:
        """Record the hold a task's create made (once; the credit check was the create's, in Redis)."""
        return self._append(reserve_posting(user_id, task_id, cost, model))

    def release(
        self, user_id: str, task_id: str, reserved: int, charge: int | None, model: str = "", *, entered: bool = False
    ) -> Entry:
        """End a task's reservation: charge `charge` credits (settle), or nothing when None (refund). Once per
        task whatever happens; the reserve entry is written first unless the caller knows it is (`entered`)."""
        if not entered:
            self.reserve(user_id, task_id, reserved, model)
        return self._append(release_posting(user_id, task_id, reserved, charge, model))

    def append_many(self, postings: Sequence[Posting], *, new_users: Set[str] = frozenset()) -> list[Entry]:
        """Write each posting once, each user's in their order, as one `_append` each would; their entries in the
        postings' order. Holds and releases only: a grant's balance check is `grant`'s.

        Round k inserts every user's k-th entry in one command (entry n+1 is numbered after entry n, so it waits
        for n's round). A user whose entry lost its number to another writer, or found its key taken, is finished
        by `_append` one entry at a time, as it would have been alone.

        `new_users`: users the caller has reason to think have no entry yet; their heads are not read (two reads
        each otherwise). A wrong guess costs that user a lost number and the reads after it, never a wrong entry."""
        if any(posting.reason is Reason.GRANT for posting in postings):
            raise ValueError("append_many writes holds and releases; a grant goes through grant()")
        queues: dict[str, deque[tuple[int, Posting]]] = {}
        for index, posting in enumerate(postings):
            queues.setdefault(posting.user_id, deque()).append((index, posting))
        written: dict[int, Entry] = {}
        with ExitStack() as locks:
            for stripe in sorted({self._stripe(user_id) for user_id in queues}):
                locks.enter_context(self._locks[stripe])
            heads = {
                user_id: Account(user_id, 0, 0, 0)
                if user_id in new_users and user_id not in self._heads
                else self._current_head(user_id)
                for user_id in queues
            }
            for user_id, head in heads.items():
                if head.seq == 0 and self.starting_credits:
                    queues[user_id].appendleft((-1, self._starting_grant(user_id)))
            alone: dict[str, deque[tuple[int, Posting]]] = {}
            while queues:
                users = list(queues)
                documents = [self._document(heads[user_id], queues[user_id][0][1]) for user_id in users]
                lost = self._insert_round(documents)
                for position, user_id in enumerate(users):
                    if position in lost:
                        alone[user_id] = queues.pop(user_id)
                        continue
                    index, _ = queues[user_id].popleft()
                    entry = Entry.from_document(documents[position])
                    heads[user_id] = entry.account
                    self._wrote(entry.account)
                    if index >= 0:
                        written[index] = entry
                    if not queues[user_id]:
                        del queues[user_id]
            for left in alone.values():
                for index, posting in left:
                    if index >= 0:  # the starting grant is _append's to write, if still missing
                        written[index] = self._append_locked(posting)
        return [written[index] for index in range(len(postings))]

    def unread_users(self, user_ids: Iterable[str]) -> set[str]:
        """Those of `user_ids` whose head this process has neither written nor read lately (a write of theirs
        would read it first)."""
        return {user_id for user_id in user_ids if user_id not in self._heads}

    def task_entries(self, user_id: str, task_id: str) -> list[Entry]:
        """A task's entries (its hold, then its settle or refund), by their unique keys."""
        query = {"key": {"$in": [f"{task_id}:reserve", f"{task_id}:release"]}} | owned_by(user_id)
        return sorted(
            (Entry.from_document(document) for document in self.entries.find(query)),
            key=lambda entry: entry.seq,
        )

    def flush_accounts(self) -> None:
        """Move the `accounts` documents of the users written since the last flush to their newest entry."""
        with self._behind_guard:
            behind, self._behind = self._behind, {}
        if not behind:
            return
        # An account may lag behind the entries (never lead), so unconditional writes are enough; an upsert that
        # lost to another process's (a duplicate key) leaves it lagging.
        updates = [
            UpdateOne(
                {"_id": account.user_id},
                {
                    "$set": {
                        "seq": account.seq,
                        "balance": account.balance,
                        "reserved": account.reserved,
                        "available": account.available,
                    }
                },
                upsert=True,
            )
            for account in behind.values()
        ]
        for batch in update_batches(updates):
            try:
                self.accounts.bulk_write(batch, ordered=False)
            except BulkWriteError as error:
                if any(failure["code"] != DUPLICATE_KEY for failure in error.details["writeErrors"]):
                    raise

    # --- the append ----------------------------------------------------------------------------------------------
    def _append(self, posting: Posting) -> Entry:
        with self._locks[self._stripe(posting.user_id)]:
            return self._append_locked(posting)

    def _append_locked(self, posting: Posting) -> Entry:
        user_id = posting.user_id
        head = self._current_head(user_id)
        for _ in range(MAX_ROUNDS):
            if head.seq == 0 and self.starting_credits:
                # The user's first entry: the starting grant (once, whichever process writes it).
                start = self._write(head, self._starting_grant(user_id))
                head = start.account if start is not None else self._roll_forward(user_id, head)
                continue
            # A grant takes credits only from what is available. A reserve entry records a hold the create
            # already made (task_service/billing.py), and a settled charge is owed whatever is left.
            if posting.reason is Reason.GRANT and -posting.amount > head.available:
                raise InsufficientCredit(user_id, -posting.amount, head.available)
            written = self._write(head, posting)
            if written is not None:
                return written
            existing = self.entry(user_id, posting.key)
            if existing is not None:
                return existing  # written before: by a retry of this call, or by an earlier run
            head = self._roll_forward(user_id, head)
        raise RuntimeError(f"ledger of {user_id!r}: {MAX_ROUNDS} rounds lost to concurrent writers")

    def _starting_grant(self, user_id: str) -> Posting:
        return Posting(user_id, f"grant:start:{user_id}", Reason.GRANT, amount=self.starting_credits, held=0)

    def _current_head(self, user_id: str) -> Account:
        """A head this process wrote is usually still the newest: entries go after it at once, and the ledger is
        read forward only when another writer took the number."""
        return self._heads.get(user_id) or self._roll_forward(user_id, self._known_head(user_id))

    def _document(self, head: Account, posting: Posting) -> dict[str, Any]:
        """Entry head.seq + 1 of `posting`, as stored."""
        seq = head.seq + 1
        optional = {"task_id": posting.task_id, "model": posting.model, "note": posting.note}
        return {
            "_id": entry_id(head.user_id, seq),
            "user_id": head.user_id,
            "seq": seq,
            "key": posting.key,
            "reason": posting.reason.value,
            "amount": posting.amount,
            "held": posting.held,
            "balance_after": head.balance + posting.amount,
            "reserved_after": head.reserved + posting.held,
            "time": utcnow(),
            **{name: value for name, value in optional.items() if value},
        }

    def _write(self, head: Account, posting: Posting) -> Entry | None:
        """Insert entry head.seq + 1; None when the number or the key was taken."""
        document = self._document(head, posting)
        try:
            self.entries.insert_one(document)
        except DuplicateKeyError:
            return None
        entry = Entry.from_document(document)
        self._wrote(entry.account)
        return entry

    def _insert_round(self, documents: list[dict[str, Any]]) -> set[int]:
        """Insert each document in one command; the positions of those whose number or key was taken."""
        try:
            self.entries.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            failures = error.details["writeErrors"]
            if any(failure["code"] != DUPLICATE_KEY for failure in failures):
                raise
            return {failure["index"] for failure in failures}
        return set()

    def _wrote(self, account: Account) -> None:
        self._heads[account.user_id] = account
        with self._behind_guard:
            self._behind[account.user_id] = account

    def _known_head(self, user_id: str) -> Account:
        cached = self._heads.get(user_id)
        if cached is not None:
            return cached
        document = self.accounts.find_one({"_id": user_id})
        if document is None:
            return Account(user_id, 0, 0, 0)
        return Account(user_id, document["seq"], document["balance"], document["reserved"])

    def _roll_forward(self, user_id: str, head: Account) -> Account:
        """`head` moved past every entry written after it (by other processes, or before a crash)."""
        while True:
            document = self.entries.find_one({"_id": entry_id(user_id, head.seq + 1)} | owned_by(user_id))
            if document is None:
                self._heads[user_id] = head
                return head
            head = Account(user_id, document["seq"], document["balance_after"], document["reserved_after"])

    def _stripe(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % LOCK_STRIPES


def iterate_history(ledger: Ledger, user_id: str, page: int = 1000) -> Iterator[Entry]:
    """Every entry of the user, oldest first (for the check)."""
    seq = 0
    while True:
        documents = list(
            ledger.entries.find({"user_id": user_id, "seq": {"$gt": seq}}).sort("seq", ASCENDING).limit(page)
        )
        if not documents:
            return
        for document in documents:
            yield Entry.from_document(document)
        seq = documents[-1]["seq"]
