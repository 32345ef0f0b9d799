"""API keys: their format, how they are stored (hashed, in MongoDB's `api_keys`), and the admin CLI.

A key reads `ak_<key id>_<secret>`. Only the SHA-256 of the secret is stored, in
the document whose `_id` is the key id, so verifying a key is one `_id` lookup
(the only filter FerretDB never answers with a scan). The secret has 256 bits
of entropy, so a fast hash is enough: there is nothing to brute-force.

    python -m task_service.api_keys create --user-id U --role user|admin|viewer [--name N] [--rate-limit R]
    python -m task_service.api_keys list
    python -m task_service.api_keys revoke KEY_ID

`create` prints the key once; it cannot be shown again.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient

from aitask_common.mongo import client_options
from aitask_common.settings import load_settings
from aitask_common.tasks import utcnow
from task_service.settings import TaskServiceSettings
from task_service.validation import InvalidRequest, validate_user_id

COLLECTION = "api_keys"
KEY_PATTERN = re.compile(r"ak_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


class Role(StrEnum):
    """What a key may do: a user key acts for its own user only, an admin key for anyone; a viewer key reads the
    AdminService (the console's view of everything) and changes nothing, and elsewhere acts as a user key."""

    USER = "user"
    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never the secret itself)."""

    key_id: str
    secret_sha256: str
    user_id: str
    role: Role
    name: str
    created: datetime
    revoked: datetime | None
    # Requests per rate-limit window; None means the service's default.
    rate_limit: int | None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ApiKey:
        """Read a stored `api_keys` document."""
        return cls(
            key_id=document["_id"],
            secret_sha256=document["secret_sha256"],
            user_id=document["user_id"],
            role=Role(document["role"]),
            name=document.get("name", ""),
            created=document["created"],
            revoked=document.get("revoked"),
            rate_limit=document.get("rate_limit"),
        )

    def matches(self, secret: str) -> bool:
        """Whether `secret` is this key's secret (in constant time)."""
        return hmac.compare_digest(hash_secret(secret), self.secret_sha256)


def new_key() -> tuple[str, str]:
    """A fresh (key id, secret); the key id is the part that may be shown and logged."""
    return secrets.token_hex(8), secrets.token_urlsafe(32)


def format_key(key_id: str, secret: str) -> str:
    """The whole key as clients send it."""
    return f"ak_{key_id}_{secret}"


def split_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = KEY_PATTERN.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    """Reads and writes the `api_keys` collection."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        self.collection = client[database][COLLECTION]

    async def create(
        self, user_id: str, role: Role, name: str = "", rate_limit: int | None = None
    ) -> tuple[ApiKey, str]:
        """Store a new key for `user_id`; returns it and the whole key (shown once, never stored)."""
        key_id, secret = new_key()
        document = {
            "_id": key_id,
            "secret_sha256": hash_secret(secret),
            "user_id": validate_user_id(user_id),
            "role": role.value,
            "name": name,
            "created": utcnow(),
            "revoked": None,
            "rate_limit": rate_limit,
        }
        await self.collection.insert_one(document)
        return ApiKey.from_document(document), format_key(key_id, secret)

    async def get(self, key_id: str) -> ApiKey | None:
        """One key by id, or None."""
        document = await self.collection.find_one({"_id": key_id})
        return ApiKey.from_document(document) if document else None

    async def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        cursor = self.collection.find({}).sort([("created", ASCENDING), ("_id", ASCENDING)])
        return [ApiKey.from_document(document) async for document in cursor]

    async def revoke(self, key_id: str) -> bool:
        """Mark a key revoked; False when there is no such key or it was revoked already."""
        result = await self.collection.update_one({"_id": key_id, "revoked": None}, {"$set": {"revoked": utcnow()}})
        return result.modified_count == 1


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m task_service.api_keys",
        description="Create, list and revoke API keys (MONGO_URL, MONGO_DATABASE; unset: .local/stack.env).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--user-id", required=True, help="the user the key belongs to")
    create.add_argument("--role", choices=[role.value for role in Role], default=Role.USER.value)
    create.add_argument("--name", default="", help="a note saying who or what uses the key")
    create.add_argument(
        "--rate-limit", type=int, default=None, help="requests per window (default: RATE_LIMIT_REQUESTS)"
    )
    commands.add_parser("list", help="list every key (never the secrets)")
    revoke = commands.add_parser("revoke", help="revoke a key (takes effect within API_KEY_CACHE_SECONDS)")
    revoke.add_argument("key_id")
    return parser.parse_args(argv)


async def _run(arguments: argparse.Namespace, store: ApiKeyStore) -> int:
    if arguments.command == "create":
        if arguments.rate_limit is not None and arguments.rate_limit < 0:
            raise InvalidRequest("--rate-limit", "must not be negative")
        record, key = await store.create(arguments.user_id, Role(arguments.role), arguments.name, arguments.rate_limit)
        print(key)
        print(
            f"created key {record.key_id} for user {record.user_id} ({record.role}); store it now: it is not "
            "shown again",
            file=sys.stderr,
        )
        return 0
    if arguments.command == "list":
        print("key_id\tuser_id\trole\tname\tcreated\trevoked\trate_limit")
        for record in await store.list():
            revoked = record.revoked.isoformat() if record.revoked else "-"
            rate_limit = "default" if record.rate_limit is None else str(record.rate_limit)
            print(
                "\t".join(
                    [
                        record.key_id,
                        record.user_id,
                        record.role,
                        record.name or "-",
                        record.created.isoformat(),
                        revoked,
                        rate_limit,
                    ]
                )
            )
        return 0
    if await store.revoke(arguments.key_id):
        print(f"revoked {arguments.key_id}", file=sys.stderr)
        return 0
    print(f"no active key {arguments.key_id!r}", file=sys.stderr)
    return 1


async def _main(arguments: argparse.Namespace, settings: TaskServiceSettings) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(**client_options(settings, "api_keys_cli"))
    try:
        return await _run(arguments, ApiKeyStore(client, settings.mongo_database))
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m task_service.api_keys`."""
    arguments = _arguments(argv)
    # MONGO_URL from the environment, else from the local stack's .local/stack.env (make run), else .env.
    settings = load_settings(TaskServiceSettings, local_stack=True)
    try:
        code = asyncio.run(_main(arguments, settings))
    except InvalidRequest as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
