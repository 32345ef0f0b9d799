"""Fault injection and per-endpoint statistics shared by every vendor module.

Each simulated endpoint has a name (see ``ENDPOINTS``) and a ``FaultConfig``:
added latency, a random error rate with a chosen status, a random rate-limit
rate, a ``Retry-After`` value and, for asynchronous video endpoints, how long a
job takes. Vendor modules ask ``FaultRegistry.roll`` whether a request should
fail and render the failure in their own wire shape; ``Stats`` counts what
reached the "upstream" so tests can assert, e.g., how many paid submits
happened.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any

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


# Fields where an explicit JSON null means "back to the default" rather than "None".
_NON_NULLABLE = {"latency_s": 0.0, "error_rate": 0.0, "error_status": 500, "rate_limit_rate": 0.0}


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
        targets = ENDPOINTS if endpoint == ALL else (endpoint,)
        for name in targets:
            cfg = self._configs[name]
            for key, value in changes.items():
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
