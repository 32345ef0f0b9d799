"""Unit tests of the API-key format, hashing and roles (pure logic, no I/O)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from task_service.api_keys import ApiKey, Role, format_key, hash_secret, new_key, split_key
from task_service.auth import UNAUTHENTICATED_ADMIN, Principal
from task_service.settings import TaskServiceSettings


def test_a_new_key_splits_back_into_its_id_and_secret() -> None:
    key_id, secret = new_key()
    assert split_key(format_key(key_id, secret)) == (key_id, secret)
    assert len(key_id) == 16 and len(secret) == 43  # 64 and 256 bits


def test_keys_are_unique() -> None:
    assert len({new_key() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ak_",
        "Bearer ak_0123456789abcdef_" + "x" * 43,
        "ak_0123456789ABCDEF_" + "x" * 43,  # key ids are lowercase hex
        "ak_0123456789abcdef_" + "x" * 42,
        "ak_0123456789abcdef_" + "x" * 44,
        "ak_0123456789abcdef_" + "x" * 42 + "!",
        "ak_0123456789abcdef_" + "x" * 43 + "\n",
        "sk_0123456789abcdef_" + "x" * 43,
    ],
)
def test_malformed_keys_do_not_split(text: str) -> None:
    assert split_key(text) is None


def test_only_the_sha256_of_the_secret_is_kept_and_it_matches_in_constant_time() -> None:
    key_id, secret = new_key()
    stored = ApiKey(key_id, hash_secret(secret), "u1", Role.USER, "", datetime.now(UTC), None, None)
    assert stored.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest() != secret
    assert stored.matches(secret)
    assert not stored.matches(new_key()[1])
    assert not stored.matches("")


def test_user_keys_act_only_for_their_user_and_admin_keys_for_anyone() -> None:
    user = Principal("k1", "alice", Role.USER, None)
    admin = Principal("k2", "ops", Role.ADMIN, None)
    assert user.may_act_for("alice") and not user.may_act_for("bob") and not user.may_act_for("")
    assert admin.may_act_for("alice") and admin.may_act_for("bob")
    assert UNAUTHENTICATED_ADMIN.may_act_for("anyone")


@pytest.mark.parametrize(("environment", "required"), [("development", False), ("test", True), ("production", True)])
def test_keys_are_required_everywhere_but_development(
    monkeypatch: pytest.MonkeyPatch, environment: str, required: bool
) -> None:
    monkeypatch.setenv("ENVIRONMENT", environment)
    assert TaskServiceSettings().auth_required is required
