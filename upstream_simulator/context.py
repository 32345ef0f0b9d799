"""The shared state of one simulator instance and the request life-cycle helpers vendors use.

A vendor handler calls ``await ctx.enter(request, name)`` first (counts the
request; a proxy-level transport fault answers here), authenticates, then
``await ctx.admit(request, name, key, render)`` (the counted per-key limits and
the quota, answered in the vendor's shape by ``render``; then the injected
latency, during which the request counts as in flight), parses the request,
then ``ctx.inject(name, prompt, render)`` (raises ``Rejected`` with a
vendor-shaped error when a fault or a ``[[fail:NNN]]`` trigger fires). The
server middleware turns ``Rejected`` into the response, applies a transport
fault that cuts the response, releases the in-flight slot and records the
outcome in ``Stats``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web

from upstream_simulator.catalogue import Catalogue
from upstream_simulator.faults import FaultRegistry, Injection, Rejected, Stats
from upstream_simulator.jobs import JobStore
from upstream_simulator.media import MediaSigner
from upstream_simulator.request_log import RequestLog
from upstream_simulator.settings import SimulatorSettings

# Key under which a request remembers which endpoint it was counted for.
ENDPOINT_KEY = web.RequestKey("upstream_simulator.endpoint", str)
# The (endpoint, key) slot a request holds while in flight, released by the middleware.
INFLIGHT_KEY = web.RequestKey("upstream_simulator.inflight", tuple)
# The transport fault that cuts this request's response ("reset" or "truncate"), if any.
TRANSPORT_KEY = web.RequestKey("upstream_simulator.transport", str)

ErrorRenderer = Callable[[Injection], web.StreamResponse]
Refusal = Literal["rate", "concurrency", "quota"]
LimitRenderer = Callable[[Refusal, int], web.StreamResponse]

_HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class Limiter:
    """Counted per-key limits: a sliding window of admitted requests and a count of those in flight."""

    def __init__(self) -> None:
        self._arrivals: dict[tuple[str, str], deque[float]] = {}
        self._inflight: dict[tuple[str, str], int] = {}
        # Per endpoint, over every key: requests in flight now, and the most there ever were at once.
        self._endpoint_inflight: dict[str, int] = {}
        self._peak: dict[str, int] = {}

    def admit(self, slot: tuple[str, str], rate: int, window_s: float, concurrency: int) -> Refusal | None:
        """Admit one request on ``slot`` (endpoint, key) or say which limit refuses it."""
        if concurrency and self._inflight.get(slot, 0) >= concurrency:
            return "concurrency"
        if rate:
            now = time.monotonic()
            arrivals = self._arrivals.setdefault(slot, deque())
            while arrivals and arrivals[0] <= now - window_s:
                arrivals.popleft()
            if len(arrivals) >= rate:
                return "rate"
            arrivals.append(now)
        self._inflight[slot] = self._inflight.get(slot, 0) + 1
        endpoint = slot[0]
        self._endpoint_inflight[endpoint] = in_flight = self._endpoint_inflight.get(endpoint, 0) + 1
        self._peak[endpoint] = max(self._peak.get(endpoint, 0), in_flight)
        return None

    def release(self, slot: tuple[str, str]) -> None:
        """A request admitted on ``slot`` has been answered."""
        left = self._inflight.get(slot, 0) - 1
        if left > 0:
            self._inflight[slot] = left
        else:
            self._inflight.pop(slot, None)
        endpoint = slot[0]
        self._endpoint_inflight[endpoint] = max(0, self._endpoint_inflight.get(endpoint, 0) - 1)

    def concurrency(self) -> dict[str, dict[str, int]]:
        """Per endpoint that was ever called: requests in flight now and the peak since the last reset."""
        return {
            endpoint: {"in_flight": self._endpoint_inflight.get(endpoint, 0), "peak": peak}
            for endpoint, peak in self._peak.items()
        }

    def reset_peaks(self) -> None:
        """Start measuring peaks afresh (from what is in flight now)."""
        self._peak = dict(self._endpoint_inflight)

    def inflight(self, slot: tuple[str, str]) -> int:
        """Requests admitted on ``slot`` and not yet answered."""
        return self._inflight.get(slot, 0)

    def clear(self) -> None:
        """Forget every count (in-flight requests still release harmlessly)."""
        self._arrivals.clear()
        self._inflight.clear()
        self._endpoint_inflight.clear()
        self._peak.clear()


def api_key_of(request: web.Request) -> str:
    """The bearer token of a request (what Ark and OpenAI count limits by)."""
    return request.headers.get("Authorization", "").partition(" ")[2].strip()


class SimContext:
    """Settings, faults, stats, jobs and the public base URL of one running simulator."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.faults = FaultRegistry(settings.faults)
        self.stats = Stats()
        self.jobs = JobStore()
        self.limiter = Limiter()
        self.requests = RequestLog()
        self.catalogue = Catalogue.load(settings.catalogue_path, retired_grace=settings.retired_grace)
        # Stable across restarts of one deployment, so links issued before a restart keep working.
        secret = "|".join(
            ["upstream-simulator-media", settings.ark_api_key, settings.volc_secret_key, settings.openai_api_key]
        )
        self.signer = MediaSigner(hashlib.sha256(secret.encode()).digest())
        # Replaced by start() once the real port is known (port 0 in tests).
        self.public_base = settings.public_base(settings.port)

    def url_lifetime(self, endpoint: str, vendor_default: float) -> float:
        """How long links issued by ``endpoint`` stay valid: its ``url_lifetime_s``, else the vendor's."""
        configured = self.faults.get(endpoint).url_lifetime_s
        return vendor_default if configured is None else configured

    def file_url(self, name: str, expires_at: float) -> str:
        """Absolute presigned URL of a generated media file, valid until ``expires_at`` (unix seconds)."""
        return f"{self.public_base}/files/{name}?{self.signer.presign(name, expires_at)}"

    async def enter(self, request: web.Request, endpoint: str) -> None:
        """Count the request against ``endpoint``; a proxy-level transport fault answers it here."""
        request[ENDPOINT_KEY] = endpoint
        self.stats.begin(endpoint)
        await self.requests.record(request, endpoint)
        fault = self.faults.transport_fault(endpoint)
        if fault == "html_502":
            raise Rejected(web.Response(status=502, text=_HTML_502, content_type="text/html"))
        if fault == "timeout_408":
            raise Rejected(web.Response(status=408, text="408 Request Timeout", content_type="text/plain"))
        if fault is not None:
            # "reset" / "truncate": the middleware cuts the response; "image_error": the Ark handler answers it.
            request[TRANSPORT_KEY] = fault

    async def admit(self, request: web.Request, endpoint: str, key: str, render: LimitRenderer) -> None:
        """Apply the quota and the counted limits of ``key`` on ``endpoint``, then the injected latency."""
        cfg = self.faults.get(endpoint)
        if cfg.quota_exhausted:
            raise Rejected(render("quota", 0))
        slot = (endpoint, key)
        refusal = self.limiter.admit(slot, cfg.rate_limit, cfg.rate_window_s, cfg.concurrency_limit)
        if refusal is not None:
            raise Rejected(render(refusal, cfg.concurrency_limit if refusal == "concurrency" else cfg.rate_limit))
        request[INFLIGHT_KEY] = slot
        if cfg.latency_s > 0:
            await asyncio.sleep(cfg.latency_s)

    def inject(self, endpoint: str, prompt: str | None, render: ErrorRenderer) -> None:
        """Raise ``Rejected`` if a prompt trigger or a random fault says this request fails."""
        injection = self.faults.roll(endpoint, prompt)
        if injection is not None:
            raise Rejected(render(injection))

    def video_seconds(self, create_endpoint: str, get_endpoint: str) -> float:
        """Duration of a new async job (per-endpoint override, else SIMULATOR_VIDEO_SECONDS)."""
        return self.faults.video_seconds(create_endpoint, get_endpoint, self.settings.video_seconds)

    def reset(self) -> None:
        """Clear statistics, jobs, limit counters and the request log (fault settings are kept)."""
        self.stats.clear()
        self.requests.clear()
        self.jobs.clear()
        self.limiter.clear()


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
    messages: list[dict[str, Any]] = param(body, "messages", (list,), required=True)
    check(bool(messages), "messages", empty_message)
    for message in messages:
        check(isinstance(message, dict) and isinstance(message.get("role"), str), "messages", "bad message")
    return messages
