"""Cursor paging of ListTasks (AIP-158): an opaque token naming the last task of the previous page.

The list is newest first by (created, _id); a token holds that pair for the page's last task, so the next page
is the tasks strictly after it, whatever was created or deleted meanwhile (an offset would skip or repeat tasks).
A token is bound to the filters it was made with: reused with others it is refused, naming `page_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aitask_common.tasks import TaskDocument, TaskStatus, TaskType
from task_service.validation import InvalidRequest

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class ListFilters:
    """What a list (a user's) or search (an admin's) call selects, each field optional; a token is valid only
    with the same."""

    user_id: str = ""
    task_type: str = ""
    status: str = ""
    provider: str = ""
    model: str = ""
    task_id: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None

    def digest(self) -> str:
        text = f"{self.user_id}\n{self.task_type}\n{self.status}"
        searched = (self.provider, self.model, self.task_id, self.created_after, self.created_before)
        if any(searched):  # a ListTasks token stays what it was
            text += "\n" + "\n".join(str(value or "") for value in searched)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def equalities(self) -> dict[str, str]:
        """The fields these filters fix (what FerretDB can push down to PostgreSQL)."""
        equal = {
            "_id": self.task_id,
            "user_id": self.user_id,
            "type": self.task_type,
            "status": self.status,
            "provider": self.provider,
            "model": self.model,
        }
        return {field: value for field, value in equal.items() if value}

    def query(self) -> dict[str, Any]:
        """The MongoDB query selecting these tasks."""
        query: dict[str, Any] = self.equalities()
        if created := created_range(self.created_after, self.created_before):
            query["created"] = created
        return query


def created_range(after: datetime | None, before: datetime | None) -> dict[str, datetime]:
    """The condition on `created` for [after, before), either end open when None ({} for both)."""
    bounds = {"$gte": after, "$lt": before}
    return {operator: value for operator, value in bounds.items() if value is not None}


@dataclass(frozen=True)
class Position:
    """Where a page ended: its last task's creation time (MongoDB keeps milliseconds) and id."""

    created: datetime
    task_id: str

    def after(self) -> dict[str, Any]:
        """The query condition for the tasks after this one, newest first."""
        return {"$or": [{"created": {"$lt": self.created}}, {"created": self.created, "_id": {"$lt": self.task_id}}]}

    def precedes(self, document: TaskDocument) -> bool:
        """Whether `document` comes after this position, newest first (the condition above, in Python)."""
        return (document["created"], document["_id"]) < (self.created, self.task_id)


def validated_filters(**fields: Any) -> ListFilters:
    """ListFilters with `fields`; InvalidRequest naming a type or status that does not exist."""
    filters = ListFilters(**fields)
    if filters.task_type and filters.task_type not in TaskType.__members__.values():
        raise InvalidRequest("type", f"must be one of {', '.join(TaskType)} (got {filters.task_type!r})")
    if filters.status and filters.status not in TaskStatus.__members__.values():
        raise InvalidRequest("status", f"must be one of {', '.join(TaskStatus)} (got {filters.status!r})")
    return filters


def parse_instant(field: str, text: str) -> datetime | None:
    """An RFC 3339 instant with its offset (None for ""); InvalidRequest naming `field` otherwise."""
    if not text:
        return None
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        example = "2026-12-01T00:00:00Z"
        raise InvalidRequest(field, f"must be an RFC 3339 instant such as {example} (got {text!r})") from None
    if instant.tzinfo is None:
        raise InvalidRequest(field, f"must name its offset, e.g. a trailing Z for UTC (got {text!r})")
    return instant.astimezone(UTC)


def next_page_token(document: TaskDocument, filters: ListFilters) -> str:
    """The token of the page that ends with `document`."""
    created = document["created"]
    milliseconds = (created.astimezone(UTC) - EPOCH) // MILLISECOND
    payload = json.dumps([milliseconds, document["_id"], filters.digest()], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def position_of(token: str, filters: ListFilters) -> Position:
    """The position a token names; InvalidRequest if it is not one of ours or was made with other filters."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        milliseconds, task_id, digest = json.loads(raw)
        if not (isinstance(milliseconds, int) and isinstance(task_id, str) and isinstance(digest, str)):
            raise TypeError(token)
        position = Position(EPOCH + milliseconds * MILLISECOND, task_id)
    except (binascii.Error, ValueError, TypeError, OverflowError):
        raise InvalidRequest(
            "page_token", "is not a token this API made: pass a page's next_page_token as it came"
        ) from None
    if digest != filters.digest():
        raise InvalidRequest("page_token", "was made for other filters: keep every filter as it was")
    return position
