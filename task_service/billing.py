"""The task service's side of the credit ledger (aitask_common/ledger.py): a create's reservation, balance and
ledger reads, admin grants. The ledger is synchronous pymongo; each call runs in a worker thread."""

from __future__ import annotations

import asyncio
from typing import Final

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from aitask.v1 import task_service_pb2 as pb
from aitask_common.ledger import PAYMENT_REQUIRED, STATUS_DETAILS, Account, Entry, InsufficientCredit, Ledger
from aitask_common.logging import get_logger

log = get_logger(__name__)

ERROR_DOMAIN: Final = "aitask"
LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX = 20, 100


class Billing:
    """Async calls on the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def reserve(self, user_id: str, task_id: str, cost: int, model: str) -> None:
        """Hold `cost` for a new task; InsufficientCredit when the user is short."""
        await asyncio.to_thread(self.ledger.reserve, user_id, task_id, cost, model)

    async def refund(self, task_id: str) -> None:
        """Give back what a create reserved for a task it did not store (best effort: the sweeper does it
        later otherwise)."""
        try:
            await asyncio.to_thread(self.ledger.release, task_id, None)
        except Exception as error:  # noqa: BLE001 - the reservation stays open; the sweeper refunds it
            log.warning("reservation not refunded yet", task_id=task_id, error=str(error))

    async def account(self, user_id: str) -> Account:
        return await asyncio.to_thread(self.ledger.account, user_id)

    async def page(self, user_id: str, limit: int, offset: int) -> tuple[list[Entry], Account]:
        entries = await asyncio.to_thread(self.ledger.history, user_id, limit, offset)
        return entries, await self.account(user_id)

    async def grant(self, user_id: str, amount: int, note: str, grant_id: str) -> Entry:
        return await asyncio.to_thread(self.ledger.grant, user_id, amount, note, grant_id)


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
