"""How long a request may wait: the `wait_seconds` field and the `Prefer: wait=N` header (task_service.prefer)."""

from __future__ import annotations

import pytest

from aitask.v1 import task_service_pb2 as pb
from task_service.prefer import MAX_WAIT_SECONDS, Wait, preferred_wait, requested_wait
from task_service.validation import InvalidRequest


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=10", 10),
        ("respond-async, wait=5", 5),
        ("WAIT = 7", 7),
        ('wait="3"', 3),
        ("wait=4; foo=bar", 4),
        ("wait=abc", None),
        ("wait=-1", None),
        ("wait=1.5", None),
        ("return=minimal", None),
        ("", None),
        (None, None),
    ],
)
def test_prefer_header_wait(header: str | None, seconds: int | None) -> None:
    assert preferred_wait(header) == seconds


def test_prefer_wait_is_capped_and_says_what_was_applied() -> None:
    assert requested_wait(pb.GetTaskResultRequest(), "wait=999") == Wait(MAX_WAIT_SECONDS, "wait=60")
    assert requested_wait(pb.GetTaskResultRequest(), "wait=0") == Wait(0, "wait=0")


def test_no_wait_asked() -> None:
    assert requested_wait(pb.CreateImageTaskRequest(), None) is None
    assert requested_wait(pb.CreateImageTaskRequest(), "wait=nonsense") is None


def test_the_field_wins_over_the_header_and_applies_nothing() -> None:
    assert requested_wait(pb.CreateTextTaskRequest(wait_seconds=0), "wait=30") == Wait(0)
    assert requested_wait(pb.GetTaskResultRequest(wait_seconds=60), None) == Wait(60)


@pytest.mark.parametrize("seconds", [-1, 61, 3600])
def test_a_field_out_of_range_is_invalid_and_named(seconds: int) -> None:
    with pytest.raises(InvalidRequest, match="^wait_seconds: must be between 0 and 60"):
        requested_wait(pb.CreateVideoTaskRequest(wait_seconds=seconds), None)
