"""Unit tests of idempotency keys and request fingerprints (pure logic, no I/O)."""

from __future__ import annotations

import pytest

from aitask_common.tasks import TaskType
from task_service.idempotency import fingerprint, idempotency_key, scoped
from task_service.validation import InvalidRequest, ValidatedRequest


def request(**changes: object) -> ValidatedRequest:
    fields: dict = {
        "task_type": TaskType.IMAGE,
        "user_id": "u1",
        "provider": "volcengine",
        "model": "doubao-seedream-3-0-t2i-250415",
        "prompt": "a cat",
        "parameters": {"priority": "default", "size": "1024x1024", "response_format": "url"},
    }
    return ValidatedRequest(**(fields | changes))


def test_no_key_anywhere_is_none() -> None:
    assert idempotency_key(None, "") is None


@pytest.mark.parametrize(("header", "field"), [("k-1", ""), (None, "k-1"), ("k-1", "k-1")])
def test_key_from_header_field_or_both_agreeing(header: str | None, field: str) -> None:
    assert idempotency_key(header, field) == "k-1"


@pytest.mark.parametrize(
    ("header", "field"),
    [("", ""), ("x" * 201, ""), (None, "x" * 201), (None, "a\nb"), (None, "tab\there"), (None, "nul\x00"), ("a", "b")],
)
def test_bad_keys_are_invalid_arguments(header: str | None, field: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        idempotency_key(header, field)
    assert error.value.field == "idempotency_key"


def test_longest_key_and_unicode_are_fine() -> None:
    assert idempotency_key(None, "x" * 200) == "x" * 200
    assert idempotency_key(None, "订单-42 ✓") == "订单-42 ✓"


def test_keys_are_scoped_per_user() -> None:
    assert scoped("alice", "k") != scoped("bob", "k")


def test_fingerprint_is_stable_and_ignores_parameter_order() -> None:
    reordered = request(parameters={"response_format": "url", "size": "1024x1024", "priority": "default"})
    assert fingerprint(request()) == fingerprint(reordered)


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt": "a dog"},
        {"user_id": "u2"},
        {"model": "jimeng_high_aes_general_v21_L"},
        {"provider": "openai"},
        {"task_type": TaskType.VIDEO},
        {"parameters": {"priority": "low", "size": "1024x1024", "response_format": "url"}},
        {"parameters": {"priority": "default", "size": "1024x1024", "response_format": "url", "seed": 1}},
        {"deadline_seconds": 30},
    ],
)
def test_fingerprint_changes_with_anything_the_request_asks_for(changes: dict) -> None:
    assert fingerprint(request(**changes)) != fingerprint(request())
