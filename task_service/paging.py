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

from aitask_common.tasks import TaskDocument
from task_service.validation import InvalidRequest

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class ListFilters:
    """What a list call selects; a token is valid only with the same."""

    user_id: str
    task_type: str
    status: str

    def digest(self) -> str:
        return hashlib.sha256(f"{self.user_id}\n{self.task_type}\n{self.status}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Position:
    """Where a page ended: its last task's creation time (MongoDB keeps milliseconds) and id."""

    created: datetime
    task_id: str

    def after(self) -> dict[str, Any]:
        """The query condition for the tasks after this one, newest first."""
        return {"$or": [{"created": {"$lt": self.created}}, {"created": self.created, "_id": {"$lt": self.task_id}}]}


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
        raise InvalidRequest("page_token", "was made for other filters: keep user_id, type and status as they were")
    return position
