"""How long a create or get may wait for its task: the `wait_seconds` field, or the REST `Prefer: wait=N` header.

`wait_seconds` is the API's own field: outside 0..MAX_WAIT_SECONDS it is INVALID_ARGUMENT. `Prefer` is a
preference (RFC 7240): a server honours what it can, so `wait=999` is capped at MAX_WAIT_SECONDS and the
answer says what was applied in `Preference-Applied: wait=60`; a `wait` that is not a whole number of seconds
is ignored, as RFC 7240 asks of preferences a server does not understand. When both are sent, the field wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from task_service.validation import InvalidRequest

MAX_WAIT_SECONDS: Final = 60
# gRPC metadata names: Envoy passes HTTP request headers in as metadata, and initial response metadata out as
# HTTP response headers.
PREFER_METADATA: Final = "prefer"
PREFERENCE_APPLIED_METADATA: Final = "preference-applied"


@dataclass(frozen=True)
class Wait:
    """How long to wait, and the `Preference-Applied` value to answer with (None: Prefer asked no wait)."""

    seconds: int
    applied: str | None = None


def requested_wait(request: Any, prefer: str | None) -> Wait | None:
    """The wait a request asks for, from its `wait_seconds` field or a `Prefer` header (None: it asks none);
    InvalidRequest for a `wait_seconds` outside 0..MAX_WAIT_SECONDS."""
    if request.HasField("wait_seconds"):
        seconds = request.wait_seconds
        if not 0 <= seconds <= MAX_WAIT_SECONDS:
            raise InvalidRequest("wait_seconds", f"must be between 0 and {MAX_WAIT_SECONDS} (got {seconds})")
        return Wait(seconds)
    preferred = preferred_wait(prefer)
    if preferred is None:
        return None
    seconds = min(preferred, MAX_WAIT_SECONDS)
    return Wait(seconds, f"wait={seconds}")


def preferred_wait(prefer: str | None) -> int | None:
    """The `wait` preference of a `Prefer` header value (`respond-async, wait=10`), or None."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() == "wait":
            value = value.strip().strip('"')
            return int(value) if value.isascii() and value.isdigit() else None
    return None
