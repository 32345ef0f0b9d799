"""Page tokens on their own: they round-trip, bind to their filters, and anything else is a 400 naming them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from task_service.paging import ListFilters, Position, next_page_token, position_of
from task_service.validation import InvalidRequest

FILTERS = ListFilters("user-1", "image", "completed")


def test_a_token_names_the_last_task_to_the_millisecond() -> None:
    created = datetime(2026, 12, 3, 17, 4, 5, 678000, tzinfo=UTC)
    token = next_page_token({"_id": "01M8YD1QTGJ9GA5P7SCC6WMZZZ", "created": created}, FILTERS)  # type: ignore[typeddict-item]
    assert position_of(token, FILTERS) == Position(created, "01M8YD1QTGJ9GA5P7SCC6WMZZZ")
    with pytest.raises(InvalidRequest, match="other filters"):
        position_of(token, ListFilters("user-1", "video", "completed"))


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda raw: base64.urlsafe_b64encode(raw).decode()))
def test_anything_else_is_refused_naming_page_token(token: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        position_of(token, FILTERS)
    assert refused.value.field == "page_token"


@pytest.mark.parametrize("payload", ['[1e400, "x", "d"]', '[99999999999999999999, "x", "d"]', "{}", "[1, 2]"])
def test_well_formed_json_that_is_no_token_is_refused(payload: str) -> None:
    token = base64.urlsafe_b64encode(payload.encode()).decode()
    with pytest.raises(InvalidRequest, match="page_token"):
        position_of(token, FILTERS)
