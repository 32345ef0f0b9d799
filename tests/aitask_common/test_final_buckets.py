"""The buckets a task with a final webhook is filed under when it turns final (aitask_common.tasks.final_buckets),
and the keys the webhook sweep asks for a span: every instant of the span is in one of them, and no more keys are
asked than the span needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from aitask_common.tasks import (
    FINAL_BUCKETS_FIELD,
    IN_FLIGHT_FIELD,
    MINUTE_BUCKETS_UP_TO,
    final_buckets,
    final_buckets_between,
    out_of_flight,
)

MOMENTS = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC))
SPANS = st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=8))


def test_a_final_write_is_filed_under_its_hour_and_minute() -> None:
    assert final_buckets(datetime(2026, 12, 5, 7, 26, 59, 999000, tzinfo=UTC)) == ["2026-12-05T07", "2026-12-05T07:26"]


@given(since=MOMENTS, span=SPANS, offset=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_every_instant_of_a_span_is_in_one_of_its_keys(since: datetime, span: timedelta, offset: float) -> None:
    until = since + span
    keys = final_buckets_between(since, until)
    instant = since + span * offset
    assert set(final_buckets(instant)) & set(keys), (since, until, instant, keys)
    # A minute (or an hour, for a long span) more than the span itself, at most.
    step = timedelta(hours=1) if span > MINUTE_BUCKETS_UP_TO else timedelta(minutes=1)
    assert len(keys) <= span / step + 2
    assert len(set(keys)) == len(keys)


def test_a_sweep_every_minute_asks_one_or_two_minutes_and_a_new_dispatcher_hours() -> None:
    since = datetime(2026, 12, 5, 7, 25, 40, tzinfo=UTC)
    assert final_buckets_between(since, since + timedelta(seconds=60)) == ["2026-12-05T07:25", "2026-12-05T07:26"]
    week = final_buckets_between(since - timedelta(days=7), since)
    assert week[0] == "2026-11-28T07" and week[-1] == "2026-12-05T07" and len(week) == 7 * 24 + 1


def test_only_a_task_that_may_have_a_final_webhook_is_filed() -> None:
    updated = datetime(2026, 12, 5, 7, 26, tzinfo=UTC)
    update = {"$set": {"status": "completed", "updated": updated}}
    assert FINAL_BUCKETS_FIELD not in out_of_flight(update)["$set"]
    filed = out_of_flight(update, final_webhook=True)
    assert filed["$set"][FINAL_BUCKETS_FIELD] == ["2026-12-05T07", "2026-12-05T07:26"]
    assert filed["$unset"] == {IN_FLIGHT_FIELD: ""} and update == {"$set": {"status": "completed", "updated": updated}}
