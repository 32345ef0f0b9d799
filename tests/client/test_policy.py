"""When the client retries and where it connects: its rules on their own (fast tier)."""

from __future__ import annotations

import pytest
from aitask_client import (
    NO_RETRIES,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RateLimited,
    RetryPolicy,
    Unavailable,
)
from aitask_client._core import Endpoint


def test_unavailable_backs_off_exponentially_with_full_jitter() -> None:
    policy = RetryPolicy(attempts=5, initial_backoff=0.5, max_backoff=2.0)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 2.0)):
        delays = [policy.delay(attempt, Unavailable("down", "UNAVAILABLE")) for _ in range(200)]
        assert all(delay is not None and 0 <= delay <= ceiling for delay in delays)
        assert max(d for d in delays if d is not None) > ceiling / 2  # spread over the range, not fixed
    assert policy.delay(5, Unavailable("down", "UNAVAILABLE")) is None  # attempts spent
    assert policy.delay(1, DeadlineExceeded("slow", "DEADLINE_EXCEEDED")) is not None
    assert NO_RETRIES.delay(1, Unavailable("down", "UNAVAILABLE")) is None


def test_a_rate_limit_waits_at_least_its_retry_after_and_only_when_it_says() -> None:
    policy = RetryPolicy()
    delay = policy.delay(1, RateLimited("slow down", retry_after=2.0))
    assert delay is not None and 2.0 <= delay <= 2.0 + policy.initial_backoff
    assert policy.delay(1, RateLimited("slow down")) is None  # no retry-after: the caller decides
    assert policy.delay(1, RateLimited("slow down", retry_after=3600)) is None  # longer than we sleep through


def test_errors_about_the_request_are_never_retried() -> None:
    policy = RetryPolicy()
    assert policy.delay(1, InvalidArgument("size: bad", "INVALID_ARGUMENT", "size")) is None
    assert policy.delay(1, NotFound("no such task", "NOT_FOUND")) is None


@pytest.mark.parametrize(
    ("url", "target", "secure", "base"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", False, "http://127.0.0.1:8080"),
        ("https://gateway.example.com", "gateway.example.com:443", True, "https://gateway.example.com:443"),
        ("127.0.0.1:9000", "127.0.0.1:9000", False, "http://127.0.0.1:9000"),
        ("http://[::1]:8080/", "[::1]:8080", False, "http://[::1]:8080"),
    ],
)
def test_gateway_urls(url: str, target: str, secure: bool, base: str) -> None:
    assert Endpoint.parse(url) == Endpoint(target, secure, base)


def test_a_url_that_is_no_gateway_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="ftp://x"):
        Endpoint.parse("ftp://x")
