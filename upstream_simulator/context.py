"""The shared state of one simulator instance and the request life-cycle helpers vendors use.

A vendor handler calls ``await ctx.enter(request, name)`` first (counts the
request, applies injected latency), authenticates and parses the request, then
``ctx.inject(name, prompt, render)`` (raises ``Rejected`` with a vendor-shaped
error when a fault or a ``[[fail:NNN]]`` trigger fires). The server middleware
turns ``Rejected`` into the response and records the outcome in ``Stats``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from upstream_simulator.faults import FaultRegistry, Injection, Rejected, Stats
from upstream_simulator.jobs import JobStore
from upstream_simulator.settings import SimulatorSettings

# Key under which a request remembers which endpoint it was counted for.
ENDPOINT_KEY = web.RequestKey("upstream_simulator.endpoint", str)

ErrorRenderer = Callable[[Injection], web.StreamResponse]


class SimContext:
    """Settings, faults, stats, jobs and the public base URL of one running simulator."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.faults = FaultRegistry(settings.faults)
        self.stats = Stats()
        self.jobs = JobStore()
        # Replaced by start() once the real port is known (port 0 in tests).
        self.public_base = settings.public_base(settings.port)

    def file_url(self, name: str) -> str:
        """Absolute URL of a generated media file."""
        return f"{self.public_base}/files/{name}"

    async def enter(self, request: web.Request, endpoint: str) -> None:
        """Count the request against ``endpoint`` and apply its configured latency."""
        request[ENDPOINT_KEY] = endpoint
        self.stats.begin(endpoint)
        latency = self.faults.get(endpoint).latency_s
        if latency > 0:
            await asyncio.sleep(latency)

    def inject(self, endpoint: str, prompt: str | None, render: ErrorRenderer) -> None:
        """Raise ``Rejected`` if a prompt trigger or a random fault says this request fails."""
        injection = self.faults.roll(endpoint, prompt)
        if injection is not None:
            raise Rejected(render(injection))

    def video_seconds(self, create_endpoint: str, get_endpoint: str) -> float:
        """Duration of a new async job (per-endpoint override, else SIMULATOR_VIDEO_SECONDS)."""
        return self.faults.video_seconds(create_endpoint, get_endpoint, self.settings.video_seconds)

    def reset(self) -> None:
        """Clear statistics and jobs (fault settings are kept)."""
        self.stats.clear()
        self.jobs.clear()


class InvalidParam(Exception):
    """A request parameter is missing or invalid; each vendor renders it in its own 400 shape."""

    def __init__(self, param: str, message: str, *, reason: str = "value") -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.reason = reason  # "missing", "type" or "value"

    @property
    def missing(self) -> bool:
        """True when the parameter is absent (vendors use a distinct error code for that)."""
        return self.reason == "missing"


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def param(
    body: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any = None, *, required: bool = False
) -> Any:
    """Read ``body[key]`` treating JSON null as absent; check its type.

    ``bool`` is not accepted where an ``int`` is expected (JSON true is not a number).
    """
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidParam(key, f"the parameter `{key}` is required", reason="missing")
        return default
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = " or ".join(_TYPE_NAMES.get(kind, kind.__name__) for kind in kinds)
        raise InvalidParam(key, f"the parameter `{key}` must be of type {expected}", reason="type")
    return value


def check(condition: bool, key: str, message: str) -> None:
    """Raise ``InvalidParam`` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise InvalidParam(key, message)


def chat_messages(body: dict[str, Any], empty_message: str) -> list[dict[str, Any]]:
    """A chat request's `messages`: a non-empty list of dicts with a role (vendors word the empty case apart)."""
    messages = param(body, "messages", (list,), required=True)
    check(bool(messages), "messages", empty_message)
    for message in messages:
        check(isinstance(message, dict) and isinstance(message.get("role"), str), "messages", "bad message")
    return messages
