"""Webhook signing secrets: one per user, `whsec_<base64 of 32 random bytes>`, made on first use, stored encrypted.

The `webhook_secrets` collection holds, per user, the Fernet ciphertexts of the current secret and, for 24 h
after a rotation, the previous one: a database dump alone signs nothing without WEBHOOK_SECRET_KEY. That setting
is a comma-separated list of Fernet keys (MultiFernet): the first encrypts, each decrypts. To rotate the key, put
a new one first, restart, run `python -m aitask_common.webhook_signing reencrypt` (which rewrites every secret
under the first key), then drop the old key.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.fernet import Fernet, MultiFernet
from pymongo import MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from aitask_common.logging import get_logger
from aitask_common.mongo import client_options
from aitask_common.settings import Environment, load_settings
from aitask_common.tasks import utcnow
from aitask_common.webhook_settings import WebhookSettings

log = get_logger(__name__)

SECRETS_COLLECTION: Final = "webhook_secrets"
SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32
# How long a rotated-out secret keeps signing beside the new one.
ROTATION_OVERLAP: Final = timedelta(hours=24)
# Per user, a field a rotation bumps once its write is done: a cache of secrets (the delivery loop's) asks this hash,
# one command for all the users it is about to sign for, and re-reads only those whose mark moved (or was lost).
SECRET_MARKS_KEY: Final = "aitask:webhooks:secret-marks"
# Against a concurrent rotation of the same user: how often a conditional write is tried.
WRITE_ATTEMPTS: Final = 5
# Development only (never production, which requires WEBHOOK_SECRET_KEY): a fixed key, so secrets survive restarts.
DEVELOPMENT_KEY: Final = base64.urlsafe_b64encode(hashlib.sha256(b"aitask development webhook key").digest())


def new_secret() -> str:
    """A fresh signing secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def cipher(settings: WebhookSettings) -> MultiFernet:
    """The encryption of secrets at rest, from WEBHOOK_SECRET_KEY."""
    keys = [key.strip() for key in settings.webhook_secret_key.split(",") if key.strip()]
    if not keys:
        if settings.environment is Environment.PRODUCTION:
            raise SystemExit("WEBHOOK_SECRET_KEY is required when ENVIRONMENT=production")
        keys = [DEVELOPMENT_KEY.decode()]
    return MultiFernet([Fernet(key) for key in keys])


@dataclass(frozen=True)
class UserSecrets:
    """A user's signing secrets in plain text."""

    user_id: str
    current: str
    created: datetime
    previous: str | None = None
    previous_expires: datetime | None = None

    def signing(self, now: datetime) -> list[str]:
        """Every secret that signs at `now`: the current one, and the previous one during its overlap."""
        live = [self.current]
        if self.previous is not None and self.previous_expires is not None and now < self.previous_expires:
            live.append(self.previous)
        return live


class WebhookSecretStore:
    """Reads, makes and rotates users' secrets (async pymongo)."""

    def __init__(self, database: AsyncDatabase[Any], fernet: MultiFernet, redis: AsyncRedis | None = None) -> None:
        self.collection = database[SECRETS_COLLECTION]
        self.fernet = fernet
        # Where a rotation bumps its user's mark (SECRET_MARKS_KEY); None: a store that never rotates.
        self.redis = redis

    async def get(self, user_id: str) -> UserSecrets:
        """The user's secrets, made on first use."""
        for _ in range(WRITE_ATTEMPTS):
            found = await self.collection.find({"_id": user_id}).to_list()
            if found:
                return self._decrypt(found[0])
            now = utcnow()
            try:
                await self.collection.insert_one(
                    {"_id": user_id, "current": self._encrypt(new_secret()), "created": now, "version": 1}
                )
            except DuplicateKeyError:
                continue  # made concurrently: read it
        raise RuntimeError(f"could not make a webhook secret for {user_id!r}")

    async def rotate(self, user_id: str) -> UserSecrets:
        """A new current secret; the one it replaces signs beside it for ROTATION_OVERLAP (one earlier still
        than that stops at once)."""
        for _ in range(WRITE_ATTEMPTS):
            await self.get(user_id)
            stored = await self.collection.find_one({"_id": user_id})
            if stored is None:
                continue
            now = utcnow()
            update = {
                "$set": {
                    "current": self._encrypt(new_secret()),
                    "created": now,
                    "previous": stored["current"],
                    "previous_expires": now + ROTATION_OVERLAP,
                    "version": stored["version"] + 1,
                }
            }
            written = await self.collection.update_one({"_id": user_id, "version": stored["version"]}, update)
            if written.modified_count == 1:
                log.info("webhook secret rotated", user_id=user_id)
                await self._bump_mark(user_id)
                return await self.get(user_id)
        raise RuntimeError(f"could not rotate the webhook secret of {user_id!r}: concurrent rotations")

    async def _bump_mark(self, user_id: str) -> None:
        """Tell caches of secrets that the user's changed (best effort: without it, a cache keeps the old secrets
        for its whole lifetime, while the old one still signs)."""
        if self.redis is None:
            return
        try:
            await self.redis.hincrby(SECRET_MARKS_KEY, user_id, 1)
        except RedisError as error:
            log.warning("webhook secret rotation not marked in Redis", user_id=user_id, error=str(error))

    def _encrypt(self, secret: str) -> str:
        return self.fernet.encrypt(secret.encode()).decode()

    def _decrypt(self, stored: dict[str, Any]) -> UserSecrets:
        previous = stored.get("previous")
        return UserSecrets(
            user_id=stored["_id"],
            current=self.fernet.decrypt(stored["current"].encode()).decode(),
            created=stored["created"],
            previous=self.fernet.decrypt(previous.encode()).decode() if previous else None,
            previous_expires=stored.get("previous_expires"),
        )


def reencrypt(settings: WebhookSettings) -> int:
    """Rewrite every stored secret under the first WEBHOOK_SECRET_KEY; how many documents."""
    fernet = cipher(settings)
    collection = MongoClient(**client_options(settings, "webhook-secrets"))[settings.mongo_database][SECRETS_COLLECTION]
    rewritten = 0
    for stored in collection.find({}):
        update = {"current": fernet.rotate(stored["current"].encode()).decode()}
        if stored.get("previous"):
            update["previous"] = fernet.rotate(stored["previous"].encode()).decode()
        collection.update_one({"_id": stored["_id"], "version": stored["version"]}, {"$set": update})
        rewritten += 1
    return rewritten


def main() -> None:
    """`python -m aitask_common.webhook_signing reencrypt`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["reencrypt"])
    parser.parse_args()
    print(f"re-encrypted {reencrypt(load_settings(WebhookSettings, local_stack=True))} users' secrets")


if __name__ == "__main__":
    main()
