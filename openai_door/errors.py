"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP statuses the
official SDKs map to their exception classes (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 429 RateLimitError, 5xx InternalServerError)."""

from __future__ import annotations

import json
from typing import Any

import grpc
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2

from aitask_common.ledger import PAYMENT_REQUIRED, STATUS_DETAILS

# gRPC status → (HTTP status, OpenAI error type, OpenAI error code).
_BY_GRPC_CODE: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", None),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "invalid_request_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error", "idempotency_key_reused"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "invalid_request_error", "conflict"),
    grpc.StatusCode.ABORTED: (409, "invalid_request_error", "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "requests", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
}


class OpenAIError(Exception):
    """An answer in OpenAI's error shape: raise it anywhere in a handler, the middleware renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """The JSON body, `{"error": {...}}`."""
        return {
            "error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
            | self.extra
        }

    def response(self) -> web.Response:
        """The HTTP answer."""
        return web.json_response(self.body(), status=self.status, headers=self.headers, dumps=json.dumps)


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    """A 400 naming the parameter at fault."""
    return OpenAIError(400, message, param=param)


def model_not_found(model: str) -> OpenAIError:
    """What OpenAI answers for a model it does not serve."""
    return OpenAIError(
        404, f"The model '{model}' does not exist or you do not have access to it.", code="model_not_found"
    )


def from_rpc_error(error: grpc.aio.AioRpcError) -> OpenAIError:
    """The task service's status as OpenAI would answer it: same class of error, its message, its Retry-After."""
    status, error_type, code = _BY_GRPC_CODE.get(error.code(), (500, "server_error", "internal_error"))
    message = error.details() or error.code().name.lower()
    # Task-service messages name the field first ("size: '9x9' is not allowed ..."): OpenAI calls it `param`.
    field, separator, _ = message.partition(": ")
    param = field if separator and status == 400 and field.replace("_", "").isalnum() else None
    headers = {}
    for key, value in error.trailing_metadata() or ():
        if key == "retry-after" and isinstance(value, str):
            headers["retry-after"] = value
        if key == STATUS_DETAILS and isinstance(value, bytes) and _reason(value) == PAYMENT_REQUIRED:
            # OpenAI's own answer when the account's credit is spent (the SDK raises RateLimitError).
            status, error_type, code = 429, "insufficient_quota", "insufficient_quota"
    return OpenAIError(status, message, error_type=error_type, param=param, code=code, headers=headers)


def _reason(details: bytes) -> str:
    """The ErrorInfo reason in a status's details, or ""."""
    info = error_details_pb2.ErrorInfo()
    for detail in status_pb2.Status.FromString(details).details:
        if detail.Unpack(info):
            return str(info.reason)
    return ""
