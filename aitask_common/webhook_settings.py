"""Settings of webhooks that both the task service (checks at create, secrets) and the dispatcher (delivery) read."""

from __future__ import annotations

from pydantic import Field

from aitask_common.settings import ServiceSettings


class WebhookSettings(ServiceSettings):
    """Webhook settings shared by the task service and the dispatcher."""

    webhook_allow_private: bool = False
    """Let a webhook_url resolve to loopback, private or link-local addresses (`make run` and the tests set it);
    cloud-metadata addresses such as 169.254.169.254 stay refused."""
    webhook_http_hosts: list[str] = Field(default_factory=list)
    """Hosts a webhook_url may reach over plain http when ENVIRONMENT=production (a JSON list); elsewhere http is
    always allowed."""
    webhook_secret_key: str = ""
    """Fernet keys (comma-separated) that encrypt the webhook signing secrets at rest: the first encrypts, every one
    decrypts, so a key rotates by putting a new one first and dropping the old once `python -m
    aitask_common.webhook_signing reencrypt` has run. Required in production; elsewhere empty means a fixed
    development key."""
    webhook_dns_timeout_seconds: float = Field(default=5.0, gt=0)
    """Longest wait for a webhook host's DNS answer, at create and at each delivery."""
