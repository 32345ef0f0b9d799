"""Page tokens on their own: they round-trip, bind to their filters, and anything else is a 400 naming them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from task_service.paging import ListFilters, Position, next_page_token, parse_instant, position_of, validated_filters
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


def test_a_search_token_binds_to_every_filter_and_a_list_token_stays_what_it_was() -> None:
    document = {"_id": "01M8YD1QTGJ9GA5P7SCC6WMZZZ", "created": datetime(2026, 12, 3, tzinfo=UTC)}
    # A token made by ListTasks before the search filters existed.
    assert FILTERS.digest() == "1222f1f7935a19cd"
    searched = ListFilters(status="failed", provider="openai", created_after=datetime(2026, 12, 1, tzinfo=UTC))
    token = next_page_token(document, searched)  # type: ignore[arg-type]
    assert position_of(token, searched).task_id == document["_id"]
    with pytest.raises(InvalidRequest, match="other filters"):
        position_of(token, ListFilters(status="failed", provider="openai"))


def test_filters_query_only_what_they_name() -> None:
    after, before = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)
    assert ListFilters(user_id="u", model="m").query() == {"user_id": "u", "model": "m"}
    assert ListFilters(task_id="t", created_after=after).query() == {"_id": "t", "created": {"$gte": after}}
    assert ListFilters(created_before=before).query() == {"created": {"$lt": before}}
    assert ListFilters().query() == {}


@pytest.mark.parametrize(("fields", "named"), [({"task_type": "audio"}, "type"), ({"status": "lost"}, "status")])
def test_a_type_or_status_that_does_not_exist_is_named(fields: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validated_filters(**fields)
    assert refused.value.field == named


def test_instants_are_rfc_3339_with_an_offset() -> None:
    assert parse_instant("created_after", "2026-12-01T08:00:00+08:00") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_instant("created_after", "2026-12-01T00:00:00Z") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_instant("created_after", "") is None
    for text, fragment in [("yesterday", "RFC 3339"), ("2026-12-01T00:00:00", "offset")]:
        with pytest.raises(InvalidRequest, match=fragment) as refused:
            parse_instant("created_before", text)
        assert refused.value.field == "created_before"
