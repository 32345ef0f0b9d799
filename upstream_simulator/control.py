"""A small synchronous client for the simulator's ``/_sim`` admin API (for tests)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx


class SimulatorControl:
    """Drive a running simulator: faults, statistics, reset.

    >>> control = SimulatorControl("http://127.0.0.1:9100")
    >>> control.set_faults("ark.images", rate_limit_rate=1.0, retry_after_s=2)
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        # trust_env=False: never send admin calls through an HTTP proxy from the environment.
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, trust_env=False)

    def set_faults(self, endpoint: str = "*", **faults: Any) -> dict[str, dict[str, Any]]:
        """Update faults of ``endpoint`` (or all with ``*``); keys: latency_s, error_rate, error_status,
        rate_limit_rate, retry_after_s, video_seconds, rate_limit, rate_window_s, concurrency_limit,
        quota_exhausted, transport, transport_rate, url_lifetime_s (``FaultSpec``). Returns the full config."""
        response = self._client.post("/_sim/faults", json={"endpoint": endpoint, **faults})
        response.raise_for_status()
        config: dict[str, dict[str, Any]] = response.json()
        return config

    def faults(self) -> dict[str, dict[str, Any]]:
        """The current fault configuration of every endpoint."""
        response = self._client.get("/_sim/faults")
        response.raise_for_status()
        config: dict[str, dict[str, Any]] = response.json()
        return config

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self._client.delete("/_sim/faults").raise_for_status()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-endpoint counters: requests, ok, errors, rate_limited."""
        response = self._client.get("/_sim/stats")
        response.raise_for_status()
        stats: dict[str, dict[str, int]] = response.json()
        return stats

    def requests(self, contains: str) -> list[dict[str, Any]]:
        """The vendor requests received whose body or query contains ``contains`` (a marker the test put in its
        prompt), oldest first: each has endpoint, method, path, query, json (the parsed body), text, at (arrival,
        unix seconds) and status (the HTTP status answered; None while in flight or if the connection was cut)."""
        response = self._client.get("/_sim/requests", params={"contains": contains})
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    def concurrency(self) -> dict[str, dict[str, int]]:
        """Per endpoint called so far: ``in_flight`` now and ``peak``, the most in flight at once since
        ``reset_peak_concurrency`` (or the start)."""
        response = self._client.get("/_sim/concurrency")
        response.raise_for_status()
        counts: dict[str, dict[str, int]] = response.json()
        return counts

    def reset_peak_concurrency(self) -> None:
        """Measure peak concurrency afresh, from what is in flight now."""
        self._client.delete("/_sim/concurrency").raise_for_status()

    def reset(self) -> None:
        """Clear statistics and jobs (faults are kept)."""
        self._client.post("/_sim/reset").raise_for_status()

    def close(self) -> None:
        """Close the underlying HTTP client."""
        self._client.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
