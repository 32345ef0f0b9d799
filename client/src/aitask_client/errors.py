"""Errors as exceptions: one class per gRPC status a caller acts on, each with the status, message and field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import grpc
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from aitask_client.types import Task

# The gateway names the wrong field first: "size: must be one of 1024x1024, …".
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): ")


class AitaskError(Exception):
    """A call the gateway refused or could not serve."""

    # Set when the call had been retried: a retry's NOT_FOUND or conflict may mean the first attempt did the work.
    retried: bool = False

    def __init__(self, message: str, code: str = "UNKNOWN", field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(AitaskError):
    """Bad input (HTTP 400); `field` names the field that is wrong."""


class NotFound(AitaskError):
    """No such task, or not yours (404)."""


class Conflict(AitaskError):
    """An idempotency key reused for another request, or a cancel of a final task (409)."""


class Unauthenticated(AitaskError):
    """A missing, unknown or revoked API key (401)."""


class PermissionDenied(AitaskError):
    """The key may not act for that user (403)."""


class RateLimited(AitaskError):
    """Over a rate or in-flight limit (429); `retry_after` is the seconds the gateway asked to wait, if it said."""

    def __init__(
        self, message: str, code: str = "RESOURCE_EXHAUSTED", field: str = "", retry_after: float | None = None
    ):
        super().__init__(message, code, field)
        self.retry_after = retry_after


class PaymentRequired(AitaskError):
    """The user's credits do not cover the task (402): `cost` and `available`, in credits."""

    def __init__(self, message: str, code: str, cost: int, available: int) -> None:
        super().__init__(message, code)
        self.cost = cost
        self.available = available


class Unavailable(AitaskError):
    """The gateway or one of its dependencies cannot be reached (503); retrying later may work."""


class DeadlineExceeded(AitaskError):
    """The call took longer than its timeout."""


class WaitTimeout(AitaskError):
    """`wait` ran out of time before the task was final; `task` is how it last stood."""

    def __init__(self, task: Task, timeout: float) -> None:
        super().__init__(f"task {task.id} is still {task.status} after {timeout:g} s", "TIMEOUT")
        self.task = task


class TaskFailed(AitaskError):
    """`run` finished on a task that failed or was cancelled; `task` holds why."""

    def __init__(self, task: Task) -> None:
        reason = task.error or (f"cancelled ({task.cancel_reason})" if task.cancel_reason else task.status)
        super().__init__(f"task {task.id} {task.status}: {reason}", task.status.upper())
        self.task = task


class OutputMismatch(AitaskError):
    """A download's bytes do not match the SHA-256 the gateway recorded for the output."""


_BY_CODE: dict[grpc.StatusCode, type[AitaskError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def retry_after(metadata: Iterable[tuple[str, str]] | None) -> float | None:
    """The `retry-after` seconds in a call's trailing metadata, if any."""
    for key, value in metadata or ():
        if key == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def _error_info(metadata: Iterable[tuple[str, str | bytes]] | None) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo in a call's status details, if any."""
    for key, value in metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            info = error_details_pb2.ErrorInfo()
            if any(detail.Unpack(info) for detail in status_pb2.Status.FromString(value).details):
                return info
    return None


def from_rpc_error(error: grpc.RpcError) -> AitaskError:
    """The exception for a failed call (sync or asyncio)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    match = _FIELD.match(message)
    field = match.group(1) if match and code is grpc.StatusCode.INVALID_ARGUMENT else ""
    kind = _BY_CODE.get(code, AitaskError)
    info = _error_info(error.trailing_metadata())
    if info is not None and info.reason == "PAYMENT_REQUIRED":
        return PaymentRequired(
            message, info.reason, int(info.metadata.get("cost", 0)), int(info.metadata.get("available", 0))
        )
    if kind is RateLimited:
        return RateLimited(message, code.name, field, retry_after(error.trailing_metadata()))
    return kind(message, code.name, field)
