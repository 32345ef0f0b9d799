"""Lists walked a bucket of creation time at a time (task_service/newest_first.py) against the test stack's FerretDB:
the same tasks in the same order as a sort of everything, by offset and by cursor, with every probe an equality
FerretDB pushes down."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from ulid import ULID

from aitask_common.sharding import owned_by
from aitask_common.tasks import (
    CREATED_BUCKETS_FIELD,
    TaskDocument,
    bucket_start,
    created_buckets,
    task_buckets,
    user_bucket,
)
from devstack.stack import LocalStack
from task_service.newest_first import BUCKET_READ_MAX, HOURS, newest_first, newest_key
from task_service.paging import ListFilters, Position
from task_service.storage import BUCKETS_MIGRATION, MIGRATIONS, TaskStore

DATABASE = "aitask_newest_first_test"
NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
PROJECTION = {"timeline": False}


def test_buckets_name_the_year_month_day_hour_minute_and_second_in_utc() -> None:
    created = datetime(2026, 12, 4, 8, 31, 15, 999_999, tzinfo=UTC)
    keys = created_buckets(created)
    assert keys == ["2026", "2026-12", "2026-12-04", "2026-12-04T08", "2026-12-04T08:31", "2026-12-04T08:31:15"]
    assert created_buckets(created.astimezone(timezone(timedelta(hours=9)))) == keys  # the instant, not the offset
    day = (2026, 12, 4)
    starts = [(2026, 1, 1), (2026, 12, 1), day, (*day, 8), (*day, 8, 31), (*day, 8, 31, 15)]
    assert [bucket_start(key) for key in keys] == [datetime(*start, tzinfo=UTC) for start in starts]


def spread_of_tasks() -> list[dict[str, Any]]:
    """About 450 tasks shaped to exercise every move of the walk: a second holding more than a probe reads (with
    ties on `created`), a task a second, one every three hours, a day after a 40-day gap, a few two years back,
    and tasks on the first instant of a day, a month and a year."""
    rng = random.Random(7)
    times: list[datetime] = []
    crowded = NOW - timedelta(seconds=10)
    times += [crowded + timedelta(milliseconds=rng.randrange(0, 1000, 3)) for _ in range(BUCKET_READ_MAX + 50)]
    times += [NOW - timedelta(seconds=11 + n, milliseconds=rng.randrange(1000)) for n in range(120)]
    times += [NOW - timedelta(hours=3 * n, minutes=7) for n in range(1, 25)]
    gap = NOW - timedelta(days=40)
    times += [gap - timedelta(minutes=47 * n) for n in range(30)]
    times += [datetime(2024, 11, 30, 23, 59, 59, 999_000, tzinfo=UTC) - timedelta(days=n) for n in range(5)]
    times += [datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)]
    tasks = []
    for n, created in enumerate(times):
        tasks.append(
            {
                "_id": str(ULID.from_datetime(created)),
                "user_id": f"user-{'ab'[n % 2]}",
                "status": "failed" if n % 3 == 0 else "completed",
                "type": "image",
                "created": created,
                CREATED_BUCKETS_FIELD: task_buckets(created, f"user-{'ab'[n % 2]}"),
                "timeline": [{"event": "created", "at": created}],
            }
        )
    return tasks


def expected(tasks: list[dict[str, Any]], filters: ListFilters, after: Position | None = None) -> list[str]:
    """The ids a sort of every task gives (the oracle), newest first."""
    equal = filters.equalities()
    chosen = [
        task
        for task in tasks
        if all(task[field] == value for field, value in equal.items())
        and (filters.created_after is None or task["created"] >= filters.created_after)
        and (filters.created_before is None or task["created"] < filters.created_before)
        and (after is None or after.precedes(task))  # type: ignore[arg-type]
    ]
    return [task["_id"] for task in sorted(chosen, key=newest_key, reverse=True)]  # type: ignore[arg-type]


class Finds(monitoring.CommandListener):
    """Records the filter of every find sent."""

    def __init__(self) -> None:
        self.filters: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.database_name == DATABASE:
            self.filters.append(dict(event.command.get("filter", {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
def stored(stack: LocalStack) -> Iterator[list[dict[str, Any]]]:
    """The spread of tasks in a database of this module's own."""
    tasks = spread_of_tasks()
    client = stack.mongo()
    collection = client[DATABASE]["tasks"]
    collection.drop()
    collection.insert_many([dict(task) for task in tasks])
    collection.create_index([(CREATED_BUCKETS_FIELD, 1)])
    collection.create_index([("user_id", 1), ("created", -1)])
    yield tasks
    client.drop_database(DATABASE)
    client.close()


def walk(
    stack: LocalStack,
    filters: ListFilters,
    count: int,
    after: Position | None = None,
    collection: str = "tasks",
    now: datetime = NOW,
) -> tuple[list[str], Finds]:
    async def run() -> tuple[list[str], Finds]:
        finds = Finds()
        client: AsyncMongoClient[TaskDocument] = AsyncMongoClient(
            stack.env["MONGO_URL"], tz_aware=True, event_listeners=[finds]
        )
        try:
            found = await newest_first(client[DATABASE][collection], filters, PROJECTION, count, after, now)
        finally:
            await client.close()
        return [document["_id"] for document in found], finds

    return asyncio.run(run())


FILTERS = [
    ListFilters(),
    ListFilters(user_id="user-a"),
    ListFilters(status="failed"),
    ListFilters(user_id="user-b", status="completed"),
    ListFilters(created_after=NOW - timedelta(days=41), created_before=NOW - timedelta(seconds=30)),
    ListFilters(user_id="nobody"),
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda filters: repr(filters.query()))
@pytest.mark.parametrize("count", [1, 25, 260, 1000])
def test_the_walk_lists_what_a_sort_of_everything_lists(
    stack: LocalStack, stored: list[dict[str, Any]], filters: ListFilters, count: int
) -> None:
    found, finds = walk(stack, filters, count)
    assert found == expected(stored, filters)[:count]
    # Every probe is an equality on a bucket FerretDB pushes down with the filters' own: none reads everything. A
    # user's list probes that user's buckets in place of an equality on user_id, and names the user only in an
    # $in (the shard key, which FerretDB does not push down beside the bucket).
    assert finds.filters
    assert all(isinstance(query.get(CREATED_BUCKETS_FIELD), str) for query in finds.filters)
    others = {field: value for field, value in filters.equalities().items() if field != "user_id"}
    assert all(query.items() >= others.items() for query in finds.filters)
    if filters.user_id:
        own = user_bucket(filters.user_id, "")
        assert all(query[CREATED_BUCKETS_FIELD].startswith(own) for query in finds.filters)
        assert all(query["user_id"] == owned_by(filters.user_id)["user_id"] for query in finds.filters)
    else:
        assert all("user_id" not in query for query in finds.filters)


@pytest.mark.parametrize("filters", FILTERS[:3], ids=lambda filters: repr(filters.query()))
def test_pages_by_cursor_list_every_task_once_in_order(
    stack: LocalStack, stored: list[dict[str, Any]], filters: ListFilters
) -> None:
    by_id = {task["_id"]: task for task in stored}
    listed: list[str] = []
    after: Position | None = None
    while True:
        page, _ = walk(stack, filters, 37, after)
        listed += page
        if len(page) < 37:
            break
        last = by_id[page[-1]]
        after = Position(last["created"], last["_id"])
    assert listed == expected(stored, filters)


def test_the_end_of_a_list_and_a_quiet_stretch_cost_a_bounded_number_of_probes(
    stack: LocalStack, stored: list[dict[str, Any]]
) -> None:
    everything, finds = walk(stack, ListFilters(), 10_000)
    assert len(everything) == len(stored)
    # From NOW back to 2020 past gaps of 40 days and two years: a couple of hundred probes, not one a second.
    assert len(finds.filters) < 250, len(finds.filters)
    _, finds = walk(stack, ListFilters(), 25)
    assert len(finds.filters) < 40, len(finds.filters)
    # A user with no task at all: the walk's end alone, a few dozen empty probes.
    nothing, finds = walk(stack, ListFilters(user_id="nobody"), 20)
    assert nothing == [] and len(finds.filters) < 40, len(finds.filters)


def test_a_user_with_a_task_every_hour_is_walked_a_day_at_a_time_not_an_hour(stack: LocalStack) -> None:
    hours = 24 * 60
    tasks = [
        {
            "_id": str(ULID.from_datetime(created)),
            "user_id": "steady",
            "created": created,
            CREATED_BUCKETS_FIELD: task_buckets(created, "steady"),
        }
        for created in (NOW - timedelta(hours=n, minutes=20) for n in range(hours))
    ]
    collection = stack.mongo()[DATABASE]["steady"]
    collection.drop()
    collection.insert_many([dict(task) for task in tasks])
    try:
        found, finds = walk(stack, ListFilters(user_id="steady"), hours, collection="steady")
        assert found == expected(tasks, ListFilters(user_id="steady"))
        # Six hours with one task each send the walk to days (24 tasks a probe): about 60 probes, not 1,440.
        assert len(finds.filters) < 120, len(finds.filters)
        deep, _ = walk(stack, ListFilters(user_id="steady"), 1000 + 25, collection="steady")
        assert deep[-25:] == found[1000:1025]
    finally:
        collection.drop()


def test_a_user_quiet_by_the_minute_but_busy_by_the_hour_is_not_read_an_hour_at_a_time(stack: LocalStack) -> None:
    # A task every 8.5 s since the hour began, 40 minutes ago: each minute is quiet (7 tasks, fewer than 8), but the
    # rest of the hour holds 280.
    now = NOW + timedelta(minutes=40, seconds=30)
    created = [NOW + timedelta(seconds=8.5 * n) for n in range(int(40.5 * 60 / 8.5))]
    tasks = [
        {
            "_id": str(ULID.from_datetime(at)),
            "user_id": "busy",
            "created": at,
            CREATED_BUCKETS_FIELD: task_buckets(at, "busy"),
        }
        for at in created
    ]
    collection = stack.mongo()[DATABASE]["busy"]
    collection.drop()
    collection.insert_many([dict(task) for task in tasks])
    try:
        found, finds = walk(stack, ListFilters(user_id="busy"), 25, collection="busy", now=now)
        assert found == expected(tasks, ListFilters(user_id="busy"))[:25]
        probes = [query[CREATED_BUCKETS_FIELD] for query in finds.filters]
        assert user_bucket("busy", created_buckets(now)[HOURS]) not in probes, probes
        assert len(probes) < 10, probes
    finally:
        collection.drop()


def test_tasks_stored_before_buckets_existed_or_before_they_held_their_users_get_theirs_once(
    stack: LocalStack,
) -> None:
    async def scenario() -> tuple[int, int, list[dict[str, Any]]]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.env["MONGO_URL"], tz_aware=True)
        database = client[f"{DATABASE}_migration"]
        try:
            store = TaskStore(client, database.name)  # type: ignore[arg-type]
            old = [{"_id": f"old-{n}", "user_id": "u", "created": NOW - timedelta(days=n)} for n in range(3)]
            # A task the migration before this one gave the first six buckets only.
            six = {"_id": "six", "user_id": "v", "created": NOW, CREATED_BUCKETS_FIELD: created_buckets(NOW)}
            current = {"_id": "current", "user_id": "w", "created": NOW, CREATED_BUCKETS_FIELD: task_buckets(NOW, "w")}
            await database["tasks"].insert_many([*old, six, current])
            await database[MIGRATIONS].insert_one({"_id": CREATED_BUCKETS_FIELD})  # that earlier migration's record
            first = await store.add_created_buckets()
            await database["tasks"].insert_one({"_id": "later", "user_id": "u", "created": NOW})
            second = await store.add_created_buckets()
            stored = await database["tasks"].find({}, {CREATED_BUCKETS_FIELD: True, "created": True}).to_list()
            assert await database[MIGRATIONS].find_one({"_id": BUCKETS_MIGRATION}) is not None
            return first, second, stored
        finally:
            await client.drop_database(database.name)
            await client.close()

    first, second, stored = asyncio.run(scenario())
    assert (first, second) == (4, 0)  # the second start finds the migration recorded and reads no task
    by_id = {task["_id"]: task for task in stored}
    for n in range(3):
        assert by_id[f"old-{n}"][CREATED_BUCKETS_FIELD] == task_buckets(NOW - timedelta(days=n), "u")
    assert by_id["six"][CREATED_BUCKETS_FIELD] == task_buckets(NOW, "v")
    assert by_id["current"][CREATED_BUCKETS_FIELD] == task_buckets(NOW, "w")
    assert CREATED_BUCKETS_FIELD not in by_id["later"]
