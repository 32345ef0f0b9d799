"""Fault injection and per-endpoint statistics shared by every vendor module.

Each simulated endpoint has a name (see ``ENDPOINTS``) and a ``FaultConfig``:
added latency, a random error rate with a chosen status, a random rate-limit
rate, a ``Retry-After`` value and, for asynchronous video endpoints, how long a
job takes; counted limits (requests per window and concurrent requests, per API
key, answered as the vendor answers them), an exhausted quota, transport faults
(a connection reset mid-response, a truncated body, an HTML 502 page, a 408,
Ark's per-image error) and the lifetime of the media URLs the endpoint issues.
Vendor modules ask ``FaultRegistry.roll`` whether a request should fail and
render the failure in their own wire shape; ``Stats`` counts what reached the
"upstream" so tests can assert, e.g., how many paid submits happened.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

# Every endpoint name the simulator knows. ``*`` in the admin API means "all of them".
ENDPOINTS: tuple[str, ...] = (
    "ark.images",
    "ark.chat",
    "ark.tasks.create",
    "ark.tasks.get",
    "ark.tasks.list",
    "ark.tasks.delete",
    "visual.CVProcess",
    "visual.CVSync2AsyncSubmitTask",
    "visual.CVSync2AsyncGetResult",
    "openai.images",
    "openai.chat",
    "openai.videos.create",
    "openai.videos.retrieve",
    "openai.videos.content",
    "openai.videos.list",
    "openai.videos.delete",
    "media.files",  # the generated media links (a vendor's object store, which has bad moments too)
)
ALL = "*"

# ``[[fail:429]]`` in a prompt fails that one request; ``[[fail:video]]`` makes an async job end failed.
_TRIGGER = re.compile(r"\[\[fail:(\d{3})\]\]")
VIDEO_FAIL_TRIGGER = "[[fail:video]]"


class FaultSpec(BaseModel):
    """A partial fault configuration, as given to the admin API or SIMULATOR_FAULTS.

    Only the keys actually present are applied; absent keys keep their value.
    """

    model_config = ConfigDict(extra="forbid")

    latency_s: float | None = Field(default=None, ge=0, le=600)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    error_status: int | None = Field(default=None, ge=400, le=599)
    rate_limit_rate: float | None = Field(default=None, ge=0, le=1)
    retry_after_s: float | None = Field(default=None, ge=0)
    video_seconds: float | None = Field(default=None, ge=0)
    # Counted limits, per API key: at most `rate_limit` requests per `rate_window_s` seconds (sliding
    # window), at most `concurrency_limit` in flight. 0 turns a limit off.
    rate_limit: int | None = Field(default=None, ge=0)
    rate_window_s: float | None = Field(default=None, gt=0, le=3600)
    concurrency_limit: int | None = Field(default=None, ge=0)
    # The account's quota is used up (OpenAI 429 insufficient_quota, Ark 403 AccountOverdueError).
    quota_exhausted: bool | None = None
    # A transport fault on `transport_rate` of the requests (see TRANSPORT_FAULTS).
    transport: Literal["reset", "truncate", "html_502", "timeout_408", "image_error"] | None = None
    transport_rate: float | None = Field(default=None, ge=0, le=1)
    # Lifetime of the media URLs (and OpenAI video assets) this endpoint issues; None: the vendor's.
    url_lifetime_s: float | None = Field(default=None, gt=0)


class FaultUpdate(FaultSpec):
    """Body of ``POST /_sim/faults``: a ``FaultSpec`` plus the endpoint it targets."""

    endpoint: str = ALL


@dataclass(slots=True)
class FaultConfig:
    """The effective fault settings of one endpoint."""

    latency_s: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    rate_limit_rate: float = 0.0
    retry_after_s: float | None = None
    video_seconds: float | None = None  # None: use the global VIDEO_SECONDS
    rate_limit: int = 0
    rate_window_s: float = 1.0
    concurrency_limit: int = 0
    quota_exhausted: bool = False
    transport: str | None = None
    transport_rate: float = 1.0
    url_lifetime_s: float | None = None


# Fields where an explicit JSON null means "back to the default" rather than "None".
_NON_NULLABLE = {
    "latency_s": 0.0,
    "error_rate": 0.0,
    "error_status": 500,
    "rate_limit_rate": 0.0,
    "rate_limit": 0,
    "rate_window_s": 1.0,
    "concurrency_limit": 0,
    "quota_exhausted": False,
    "transport_rate": 1.0,
}
# What each transport fault does to a response:
TRANSPORT_FAULTS = {
    "reset": "the status line, headers and half the body are sent, then the connection is reset (TCP RST)",
    "truncate": "the headers announce the whole body, half of it is sent, then the connection is closed",
    "html_502": "an HTML '502 Bad Gateway' page from a proxy in front of the vendor (not JSON)",
    "timeout_408": "a proxy's '408 Request Timeout' (plain text), as when a request body is too slow",
    "image_error": "ark.images only: HTTP 200 whose data[0] is {'error': {code, message}} instead of an image",
}


@dataclass(frozen=True, slots=True)
class Injection:
    """A decision to fail one request: the HTTP status and the Retry-After to advertise."""

    status: int
    retry_after_s: float | None
    reason: str  # "trigger" | "rate_limit" | "error"


class Rejected(Exception):
    """Raised by handlers to answer early with a ready vendor-shaped error response."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def check_endpoint(name: str) -> str:
    """Return ``name`` if it is a known endpoint or ``*``; raise ``ValueError`` otherwise."""
    if name != ALL and name not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(ENDPOINTS)} or '*'")
    return name


def prompt_trigger(text: str | None) -> int | None:
    """Return the status requested by a ``[[fail:NNN]]`` marker in ``text``, if any."""
    if not text:
        return None
    match = _TRIGGER.search(text)
    if match is None:
        return None
    status = int(match.group(1))
    return status if 400 <= status <= 599 else None


def wants_video_failure(text: str | None) -> bool:
    """True when ``text`` asks for the async job to end in a failed state."""
    return text is not None and VIDEO_FAIL_TRIGGER in text


class FaultRegistry:
    """Per-endpoint fault configuration, mutable at run time."""

    def __init__(self, initial: dict[str, FaultSpec] | None = None, rng: random.Random | None = None) -> None:
        self._initial = dict(initial or {})
        self._rng = rng or random.Random()
        self._configs: dict[str, FaultConfig] = {}
        self.clear()
        # Apply "*" first so endpoint-specific entries can refine it.
        for name in sorted(self._initial, key=lambda n: n != ALL):
            self.update(name, self._initial[name])

    def clear(self) -> None:
        """Reset every endpoint to "no faults"."""
        self._configs = {name: FaultConfig() for name in ENDPOINTS}

    def update(self, endpoint: str, spec: FaultSpec) -> None:
        """Apply the keys present in ``spec`` to ``endpoint`` (or to all endpoints for ``*``)."""
        check_endpoint(endpoint)
        changes = spec.model_dump(exclude_unset=True, exclude={"endpoint"})
        if changes.get("transport") == "image_error" and endpoint != "ark.images":
            raise ValueError("transport 'image_error' exists on ark.images only (Ark's per-image data[].error)")
        if changes.get("quota_exhausted") and endpoint.startswith("visual."):
            raise ValueError("the visual API documents no quota answer: quota_exhausted is for ark.* and openai.*")
        targets = ENDPOINTS if endpoint == ALL else (endpoint,)
        for name in targets:
            cfg = self._configs[name]
            for key, value in changes.items():
                if key == "quota_exhausted" and name.startswith("visual."):
                    continue  # only reachable through "*"
                if value is None and key in _NON_NULLABLE:
                    value = _NON_NULLABLE[key]
                setattr(cfg, key, value)

    def get(self, endpoint: str) -> FaultConfig:
        """The current configuration of ``endpoint``."""
        return self._configs[endpoint]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """All configurations as plain JSON-able dicts."""
        return {name: asdict(cfg) for name, cfg in self._configs.items()}

    def roll(self, endpoint: str, prompt: str | None) -> Injection | None:
        """Decide whether this request fails: prompt trigger first, then the random rates."""
        cfg = self._configs[endpoint]
        status = prompt_trigger(prompt)
        if status is not None:
            return Injection(status, cfg.retry_after_s, "trigger")
        if cfg.rate_limit_rate and self._rng.random() < cfg.rate_limit_rate:
            return Injection(429, cfg.retry_after_s, "rate_limit")
        if cfg.error_rate and self._rng.random() < cfg.error_rate:
            return Injection(cfg.error_status, cfg.retry_after_s, "error")
        return None

    def transport_fault(self, endpoint: str) -> str | None:
        """The transport fault to apply to this request, if one is configured and its rate says so."""
        cfg = self._configs[endpoint]
        if cfg.transport is None or self._rng.random() >= cfg.transport_rate:
            return None
        return cfg.transport

    def video_seconds(self, create_endpoint: str, get_endpoint: str, default: float) -> float:
        """How long a new async job takes: the create endpoint's setting, else the get endpoint's."""
        for name in (create_endpoint, get_endpoint):
            value = self._configs[name].video_seconds
            if value is not None:
                return value
        return default


@dataclass(slots=True)
class EndpointStats:
    """Counters of one endpoint."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    rate_limited: int = 0


@dataclass
class Stats:
    """Request counters per endpoint; ``requests`` counts on arrival, the rest on completion."""

    counts: dict[str, EndpointStats] = field(default_factory=lambda: {n: EndpointStats() for n in ENDPOINTS})

    def begin(self, endpoint: str) -> None:
        """Count a request that reached ``endpoint``."""
        self.counts[endpoint].requests += 1

    def finish(self, endpoint: str, status: int) -> None:
        """Classify the final HTTP status of a request to ``endpoint``."""
        entry = self.counts[endpoint]
        if status == 429:
            entry.rate_limited += 1
        elif status >= 400:
            entry.errors += 1
        else:
            entry.ok += 1

    def clear(self) -> None:
        """Zero every counter."""
        self.counts = {n: EndpointStats() for n in ENDPOINTS}

    def snapshot(self) -> dict[str, dict[str, int]]:
        """All counters as plain dicts, every known endpoint present."""
        return {name: asdict(entry) for name, entry in self.counts.items()}


def retry_after_headers(injection: Injection, *, with_ms: bool = False) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up) and optionally OpenAI's ``retry-after-ms``."""
    if injection.retry_after_s is None:
        return {}
    seconds = injection.retry_after_s
    headers = {"Retry-After": str(max(0, -int(-seconds // 1)))}
    if with_ms:
        headers["retry-after-ms"] = str(int(round(seconds * 1000)))
    return headers
