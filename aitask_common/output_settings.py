"""Settings of output copies that the dispatcher (stores them), the task service (signs and serves them) and the
operator tools (retention, the storage check) share."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from aitask_common.webhook_settings import WebhookSettings


class OutputStoreKind(StrEnum):
    """Where output copies live."""

    GRIDFS = "gridfs"
    S3 = "s3"
    NONE = "none"


class OutputSettings(WebhookSettings):
    """Output store, signed links and retention (beside the webhook settings the same processes share)."""

    output_store: OutputStoreKind = OutputStoreKind.GRIDFS
    """Where image and video copies are kept: `gridfs` (the MongoDB database itself, nothing new to run), `s3`
    (any S3-compatible store: S3_ENDPOINT_URL, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY), or `none`: nothing is
    copied, and a task's links are the vendor's own (they expire with the vendor's retention)."""
    output_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    """A larger upstream output fails its task with a message saying so, and nothing is stored."""
    output_url_secret: str = ""
    """HMAC key that signs output links (every task service must share it). Required in production; elsewhere
    empty means a fixed development key."""
    output_url_ttl_seconds: int = Field(default=86400, ge=1)
    """How long a signed output link stays valid; every read of a task gives a fresh one."""
    output_public_url: str = ""
    """Scheme and host clients reach the gateway at (e.g. `https://api.example.com`), put before output links;
    empty gives links relative to the gateway (`/api/v1/ai/task/…/output?…`)."""
    output_retention_days: int = Field(default=0, ge=0)
    """Stored outputs older than this are deleted by the retention sweep (the task stays, with `upstream_url`);
    0 keeps them forever."""
    task_retention_days: int = Field(default=0, ge=0)
    """Tasks (with their outputs) created longer ago than this are deleted by the retention sweep; 0 keeps them
    forever."""
    s3_endpoint_url: str = ""
    """OUTPUT_STORE=s3: the store's endpoint (empty: AWS's own)."""
    s3_bucket: str = "aitask-outputs"
    """OUTPUT_STORE=s3: the bucket (created at start-up when missing)."""
    s3_access_key: str = ""
    """OUTPUT_STORE=s3: access key id (empty: boto3's own credential chain)."""
    s3_secret_key: str = ""
    """OUTPUT_STORE=s3: secret access key."""
    s3_region: str = "us-east-1"
    """OUTPUT_STORE=s3: region name."""
