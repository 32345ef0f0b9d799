"""Idempotent creates: the key a client sends, its scope, and the fingerprint that tells a retry from a new request.

A task created with a key stores `idempotency` = "<user_id>:<key>" under a unique
index, and the fingerprint of the validated request. The insert decides between
concurrent creates; a create whose key is taken answers with the stored task if
the fingerprints match, and ALREADY_EXISTS (409) if they do not.
"""

from __future__ import annotations

import hashlib
import json

from task_service.validation import InvalidRequest, ValidatedRequest

METADATA_NAME = "idempotency-key"
MAX_KEY_CHARS = 200


def idempotency_key(header: str | None, field: str) -> str | None:
    """The key of a create request (the `Idempotency-Key` header or the `idempotency_key` field), or None."""
    if header is not None and field and header != field:
        raise InvalidRequest("idempotency_key", "differs from the Idempotency-Key header")
    key = field or header
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise InvalidRequest("idempotency_key", f"must be 1-{MAX_KEY_CHARS} printable characters")
    return key


def scoped(user_id: str, key: str) -> str:
    """What the unique index holds: keys are per user, so two users may pick the same key."""
    return f"{user_id}:{key}"


def fingerprint(request: ValidatedRequest) -> str:
    """A digest of everything a create asks for, defaults filled in (two requests that mean the same match)."""
    canonical = json.dumps(
        {
            "type": request.task_type.value,
            "user_id": request.user_id,
            "provider": request.provider,
            "model": request.model,
            "prompt": request.prompt,
            "parameters": request.parameters,
            # Each only when set, so the fingerprints of tasks stored before deadlines or webhooks still match.
            **({"deadline_seconds": request.deadline_seconds} if request.deadline_seconds is not None else {}),
            **({"webhook": [request.webhook_url, *request.webhook_events]} if request.webhook_url else {}),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
