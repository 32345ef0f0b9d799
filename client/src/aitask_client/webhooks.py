"""Verifying the gateway's webhooks (Standard Webhooks v1) in a receiver, on top of `standardwebhooks`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from aitask_client.types import Task

__all__ = ["WebhookVerificationError", "task_of", "verify_webhook"]


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str | Sequence[str]) -> dict[str, Any]:
    """The message's JSON (`{"type", "timestamp", "data"}`) if its signature and timestamp are good.

    `secret` is the user's `whsec_…` secret, or several (a receiver mid-rotation accepts either).
    Raises WebhookVerificationError on a bad signature, a missing header or a timestamp over 5 minutes off.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    payload = body.decode() if isinstance(body, bytes) else body
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("verify_webhook needs at least one secret")
    error: WebhookVerificationError | None = None
    for candidate in secrets:
        try:
            verified: dict[str, Any] = Webhook(candidate).verify(payload, lowered)
            return verified
        except WebhookVerificationError as failure:
            error = failure
    assert error is not None
    raise error


def task_of(message: Mapping[str, Any]) -> Task:
    """The task a verified message carries (its `data`), as a Task."""
    from google.protobuf import json_format

    from aitask_client._proto import task_service_pb2 as pb
    from aitask_client.types import task_from_proto

    return task_from_proto(json_format.ParseDict(message["data"], pb.Task(), ignore_unknown_fields=True))
