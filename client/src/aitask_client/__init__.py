"""aitask-client: the gateway's Python library.

    from aitask_client import Client
    with Client("http://127.0.0.1:8080", api_key) as client:
        task = client.run("doubao-seedream-3-0-t2i-250415", "a red fox in the snow", size="1024x1024")
        client.download(task, "fox.png")

`AsyncClient` has the same methods as coroutines. Errors are `AitaskError` subclasses.
"""

from aitask_client._core import NO_RETRIES, RetryPolicy
from aitask_client.aio import AsyncClient
from aitask_client.client import Client
from aitask_client.errors import (
    AitaskError,
    Conflict,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    OutputMismatch,
    PaymentRequired,
    PermissionDenied,
    RateLimited,
    TaskFailed,
    Unauthenticated,
    Unavailable,
    WaitTimeout,
)
from aitask_client.types import Balance, Event, LedgerEntry, Model, Output, Parameters, Task, Usage, WebhookSecret
from aitask_client.webhooks import WebhookVerificationError, task_of, verify_webhook

__all__ = [
    "NO_RETRIES",
    "AitaskError",
    "AsyncClient",
    "Balance",
    "Client",
    "Conflict",
    "DeadlineExceeded",
    "Event",
    "InvalidArgument",
    "LedgerEntry",
    "Model",
    "NotFound",
    "Output",
    "OutputMismatch",
    "PaymentRequired",
    "Parameters",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "Task",
    "TaskFailed",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "WaitTimeout",
    "WebhookSecret",
    "WebhookVerificationError",
    "task_of",
    "verify_webhook",
]
