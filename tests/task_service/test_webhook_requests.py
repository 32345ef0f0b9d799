"""A create's webhook_url and webhook_events (issue 17, "Security"): checked without a stack; the addresses are IP
literals or `localhost`, so no test needs a DNS server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aitask.v1 import task_service_pb2 as pb
from aitask_common.settings import Environment
from aitask_common.webhook_settings import WebhookSettings
from task_service.validation import InvalidRequest
from task_service.webhooks import WebhookRequest, check_webhook

PUBLIC = "http://93.184.216.34/hook"


def settings(**overrides: Any) -> WebhookSettings:
    return WebhookSettings(_env_file=None, **overrides)


def check(url: str, events: list[str] | None = None, **overrides: Any) -> WebhookRequest | None:
    request = pb.CreateTextTaskRequest(webhook_url=url, webhook_events=events or [])
    return asyncio.run(check_webhook(request, settings(**overrides)))


def refused(url: str, **overrides: Any) -> str:
    with pytest.raises(InvalidRequest) as raised:
        check(url, **overrides)
    assert raised.value.field == "webhook_url"
    return str(raised.value)


def test_no_url_is_no_webhook() -> None:
    assert check("") is None


def test_a_public_address_is_accepted_with_the_final_event_by_default() -> None:
    assert check(PUBLIC) == WebhookRequest(PUBLIC, ["final"])


def test_events_are_checked_and_kept_in_a_fixed_order() -> None:
    assert check(PUBLIC, ["final", "started"]) == WebhookRequest(PUBLIC, ["started", "final"])
    with pytest.raises(InvalidRequest, match="webhook_events: must be among started, progress, final"):
        check(PUBLIC, ["done"])
    with pytest.raises(InvalidRequest, match="webhook_events: needs a webhook_url"):
        check("", ["final"])


@pytest.mark.parametrize("url", ["ftp://93.184.216.34/", "file:///etc/passwd", "javascript:alert(1)", "93.184.216.34"])
def test_only_http_and_https(url: str) -> None:
    assert "must be an http or https URL" in refused(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.10/", "private"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://169.254.1.1/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ],
)
def test_internal_addresses_are_refused(url: str, reason: str) -> None:
    assert reason in refused(url)


def test_allowing_private_addresses_still_refuses_cloud_metadata() -> None:
    assert check("http://127.0.0.1:8080/hook", webhook_allow_private=True) is not None
    assert check("http://10.1.2.3/", webhook_allow_private=True) is not None
    for metadata in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://100.100.100.200/"):
        assert "cloud metadata" in refused(metadata, webhook_allow_private=True)


def test_production_requires_https_unless_the_host_is_allowed() -> None:
    assert "must be https" in refused(PUBLIC, environment=Environment.PRODUCTION)
    assert check(PUBLIC, environment=Environment.PRODUCTION, webhook_http_hosts=["93.184.216.34"]) is not None
    assert check("https://93.184.216.34/", environment=Environment.PRODUCTION) is not None


def test_credentials_and_hostless_urls_are_refused() -> None:
    assert "credentials" in refused("https://user:pass@93.184.216.34/")
    assert "must name a host" in refused("http:///path")


def test_a_host_that_does_not_resolve_is_refused() -> None:
    assert "does not resolve" in refused("http://no-such-host.invalid/")
