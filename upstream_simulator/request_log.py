"""The vendor requests the simulator received, as they arrived: what tests read to see what the gateway really
sent (the model, a seed, a size, a temperature) and how many calls a task cost, instead of trusting echoed fields.

A test finds its own requests by a marker it put in the prompt (``GET /_sim/requests?contains=<marker>``), so
tests running side by side never see each other's calls and nothing needs a global reset.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from aiohttp import web

# Enough for the requests of the tests running at once; the oldest are dropped first.
CAPACITY = 10_000
# The log entry of a request, for its status once answered.
ENTRY_KEY = web.RequestKey("upstream_simulator.request_log_entry", dict)
# Longest body kept per request (prompts are short; video input references are not kept whole).
MAX_BODY_CHARS = 64 * 1024


class RequestLog:
    """A bounded log of counted vendor requests: endpoint, method, path, query, body, arrival time and the status
    answered (None while in flight, or when the connection was cut before an answer)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity)

    async def record(self, request: web.Request, endpoint: str) -> None:
        """Log one request as it arrives. A multipart body (OpenAI's video create) is not read here: reading
        it would consume the stream its handler parses, so such a request is logged without its body."""
        text = ""
        if not request.content_type.startswith("multipart/"):
            # aiohttp keeps the bytes read: the handler's own read() or json() gets them again.
            text = (await request.read()).decode("utf-8", errors="replace")[:MAX_BODY_CHARS]
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        entry = {
            "endpoint": endpoint,
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "json": body,
            "text": text,
            "at": time.time(),
            "status": None,
        }
        request[ENTRY_KEY] = entry
        self._entries.append(entry)

    @staticmethod
    def finish(request: web.Request, status: int) -> None:
        """Record the HTTP status a logged request was answered with."""
        entry = request.get(ENTRY_KEY)
        if entry is not None:
            entry["status"] = status

    def find(self, contains: str) -> list[dict[str, Any]]:
        """The logged requests, oldest first, whose body or query contains ``contains``."""
        return [
            entry
            for entry in self._entries
            if contains in entry["text"] or any(contains in value for value in entry["query"].values())
        ]

    def clear(self) -> None:
        """Forget every logged request."""
        self._entries.clear()
