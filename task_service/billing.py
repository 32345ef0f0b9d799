"""The task service's side of credits: a create's hold (Redis, aitask_common/credit_holds.py), balance and ledger
reads, admin grants. The ledger (aitask_common/ledger.py) is synchronous pymongo; its calls run in a thread."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from aitask.v1 import task_service_pb2 as pb
from aitask_common.credit_holds import (
    ADVANCE_SCRIPT,
    REBUILD_SCRIPT,
    RELEASE_SCRIPT,
    RELEASED_TOMBSTONE_MS,
    credit_key,
    released_key,
)
from aitask_common.ledger import PAYMENT_REQUIRED, STATUS_DETAILS, Account, Entry, InsufficientCredit, Ledger
from aitask_common.logging import get_logger
from aitask_common.prices import charge
from aitask_common.tasks import BILLING_OPEN_FIELD, TaskStatus

log = get_logger(__name__)

ERROR_DOMAIN: Final = "aitask"
LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX = 20, 100


class Billing:
    """Holds, reads and grants credits."""

    def __init__(self, redis: Redis, ledger: Ledger, tasks: AsyncCollection[Any]) -> None:
        self.redis = redis
        self.ledger = ledger
        self.tasks = tasks
        self._advance = redis.register_script(ADVANCE_SCRIPT)
        self._rebuild = redis.register_script(REBUILD_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    async def release_unstored(self, user_id: str, task_id: str) -> None:
        """Drop the hold of a task the create did not store (best effort: the settlement pass drops it later)."""
        try:
            await self._release(
                keys=[credit_key(user_id), released_key(user_id, task_id)], args=[task_id, 0, 0, RELEASED_TOMBSTONE_MS]
            )
        except Exception as error:  # noqa: BLE001 - the hold stays; the settlement pass drops orphans
            log.warning("credit hold not dropped yet", task_id=task_id, error=str(error))

    async def settle_deleted(self, task: dict[str, Any]) -> None:
        """Settle a task about to be deleted while it holds credit (the settlement pass would not find it again):
        as it ended, or, not final yet, as a cancel in its status is (prices.charge)."""
        status = TaskStatus(task["status"])
        ended = task if status.is_final else task | {"status": "cancelled", "cancelled_from": status.value}
        reserved = task["billing"]["reserved"]
        cost = charge(ended, reserved)
        entry = await asyncio.to_thread(
            self.ledger.release, task["user_id"], task["_id"], reserved, cost, task.get("model", "")
        )
        await asyncio.to_thread(self.ledger.flush_accounts)
        await self._release(
            keys=[credit_key(task["user_id"]), released_key(task["user_id"], task["_id"])],
            args=[task["_id"], entry.seq, entry.balance_after, RELEASED_TOMBSTONE_MS],
        )

    async def credits(self, user_id: str) -> Account:
        """The user's credits as their Redis hash has them (rebuilt first if missing): what a create checks."""
        key = credit_key(user_id)
        for _ in range(2):
            seq, balance, held = await self.redis.hmget(key, ["seq", "balance", "held"])
            if seq is not None and balance is not None and held is not None:
                return Account(user_id, int(seq), int(balance), int(held))
            await self.rebuild(user_id)
        raise RuntimeError(f"credits of {user_id!r} could not be rebuilt")

    async def page(self, user_id: str, limit: int, offset: int) -> tuple[list[Entry], Account]:
        entries = await asyncio.to_thread(self.ledger.history, user_id, limit, offset)
        return entries, await self.credits(user_id)

    async def grant(self, user_id: str, amount: int, note: str, grant_id: str) -> Entry:
        """Append a grant to the ledger, then move the user's hash on. A grant that takes credits is checked
        against the ledger's own balance and holds."""
        entry = await asyncio.to_thread(self.ledger.grant, user_id, amount, note, grant_id)
        await asyncio.to_thread(self.ledger.flush_accounts)
        await self._advance(keys=[credit_key(user_id)], args=[entry.seq, entry.balance_after])
        return entry

    async def rebuild(self, user_id: str) -> None:
        """Write the user's credit hash from MongoDB if it is missing: the ledger's newest entry and the holds of
        their tasks still holding credit. Concurrent rebuilds may race: the first one written stands."""
        account = await asyncio.to_thread(self.ledger.account, user_id)
        holds: list[str | int] = []
        tombstones = []
        query = {"user_id": user_id, BILLING_OPEN_FIELD: True}
        async for task in self.tasks.find(query, {"billing.reserved": 1, "created": 1}):
            holds += [task["_id"], task["billing"]["reserved"], int(task["created"].timestamp() * 1000)]
            tombstones.append(released_key(user_id, task["_id"]))
        if await self._rebuild(keys=[credit_key(user_id), *tombstones], args=[account.seq, account.balance, *holds]):
            log.info("credit hash built from the ledger", user_id=user_id, holds=len(tombstones))


def page_size(limit: int) -> int:
    """A ledger page's size; ValueError names the bound."""
    if limit < 0 or limit > LEDGER_PAGE_MAX:
        raise ValueError(f"limit: must be between 0 and {LEDGER_PAGE_MAX} (0 means {LEDGER_PAGE_DEFAULT})")
    return limit or LEDGER_PAGE_DEFAULT


def balance_to_proto(account: Account) -> pb.Balance:
    return pb.Balance(
        user_id=account.user_id, balance=account.balance, reserved=account.reserved, available=account.available
    )


def entry_to_proto(entry: Entry) -> pb.LedgerEntry:
    message = pb.LedgerEntry(
        seq=entry.seq,
        reason=entry.reason.value,
        task_id=entry.task_id,
        amount=entry.amount,
        held=entry.held,
        balance_after=entry.balance_after,
        reserved_after=entry.reserved_after,
        model=entry.model,
        note=entry.note,
    )
    message.time.FromDatetime(entry.time)
    return message


def payment_required(error: InsufficientCredit) -> tuple[str, tuple[tuple[str, bytes], ...]]:
    """The message and trailing metadata of a create short of credit: FAILED_PRECONDITION carrying an ErrorInfo
    whose reason is PAYMENT_REQUIRED (the google.rpc way of saying which precondition failed)."""
    info = error_details_pb2.ErrorInfo(
        reason=PAYMENT_REQUIRED,
        domain=ERROR_DOMAIN,
        metadata={"cost": str(error.cost), "available": str(error.available)},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=str(error), details=[detail])
    return str(error), ((STATUS_DETAILS, status.SerializeToString()),)


async def abort_payment_required(context: grpc.aio.ServicerContext, error: InsufficientCredit) -> None:
    message, trailers = payment_required(error)
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message, trailing_metadata=trailers)
