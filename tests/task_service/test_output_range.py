"""Which bytes a Range header asks of an output (task_service.output_http.requested_range)."""

from __future__ import annotations

import pytest

from task_service.output_http import Unsatisfiable, requested_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        # Malformed (or several ranges): answered whole, as HTTP says.
        ("bytes=oops", None),
        ("items=0-9", None),
        ("bytes=5-1", None),
        ("bytes=-", None),
        ("bytes=0-1,5-6", None),
    ],
)
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert requested_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        requested_range(header, 1000)
