"""Lists newest first a bucket of creation time at a time, for a store that answers equalities only.

FerretDB 1.x, the local store, pushes equality filters down to PostgreSQL (where GIN indexes answer them, see
devstack/postgres.py) but no range, no sort and no limit beside a filter: a list sorted by `created` reads every
task its filters select into FerretDB and sorts them there (12 s for the console's unfiltered list at 100,000
tasks), and a query costs about what its equalities select, however few documents the client takes. So each task
carries the year, month, day, hour, minute and second it was created in (`created_buckets`), and a list walks
back from its newest possible instant one bucket at a time, each probe an equality that selects little:

- it starts at seconds; a bucket with more than BUCKET_READ_MAX tasks sends it to the finer level (none is read
  whole but a second);
- it moves to the coarser level after a quiet stretch, a second or a minute with fewer than SPARSE tasks or
  QUIET_BEFORE_COARSER hours, days or months in a row each with fewer than SPARSE (so a busy day behind one quiet
  hour is not selected whole to find it, and a user with a task an hour is not walked an hour at a time), only
  where the rest of the coarser bucket, as busy as the span just read, would hold no more than half BUCKET_READ_MAX
  (half: one bucket's rate is a small sample), and only where it holds few tasks already walked past (read again,
  dropped);
- it ends at FIRST_YEAR: the end of a list costs a few dozen empty probes, not a read of everything.

A user's list probes the user's own buckets ("<user_id>|<key>", aitask_common.tasks.task_buckets): each probe then
selects only what it returns, not every task of a busy second nor every task of a user with a hundred thousand.

MongoDB answers each probe from the multikey index on `created_buckets`; one code path for both stores. A user's
probes also name the user (the shard key, aitask_common.sharding), so on a sharded MongoDB each asks one shard.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from aitask_common.sharding import owned_by
from aitask_common.tasks import (
    BUCKET_WIDTHS,
    CREATED_BUCKETS_FIELD,
    TaskDocument,
    bucket_start,
    created_buckets,
    user_bucket,
)
from task_service.paging import ListFilters, Position, created_range

# Most tasks a probe reads; a bucket with more is looked at closer (a second with more is read whole).
BUCKET_READ_MAX = 200
YEARS, MONTHS, DAYS, HOURS, MINUTES, SECONDS = range(len(BUCKET_WIDTHS))
# A second or minute with fewer tasks than this is quiet enough to go on by the coarser level.
SPARSE = 8
# Quiet hours, days or months in a row (each with fewer than SPARSE tasks) after which the walk goes on by the
# coarser level.
QUIET_BEFORE_COARSER = {HOURS: 6, DAYS: 7, MONTHS: 3}
# No task is older (the walk's end; this gateway's first tasks are from 2026).
FIRST_YEAR = datetime(2020, 1, 1, tzinfo=UTC)
# Tasks created by a host whose clock runs this much ahead of ours are listed at once.
CLOCK_SKEW = timedelta(seconds=2)
SECOND = timedelta(seconds=1)
MILLISECOND = timedelta(milliseconds=1)


def newest_key(document: TaskDocument) -> tuple[datetime, str]:
    """A task's place in a list, newest first: by this, descending."""
    return document["created"], document["_id"]


async def newest_first(
    tasks: AsyncCollection[TaskDocument],
    filters: ListFilters,
    projection: dict[str, bool],
    count: int,
    after: Position | None,
    now: datetime,
) -> list[TaskDocument]:
    """The first `count` tasks `filters` select, newest first by (created, _id), past `after` when given."""
    equalities = filters.equalities()
    user_id = equalities.pop("user_id", "")  # a user's list probes that user's buckets, which imply it
    if user_id:
        equalities |= owned_by(user_id)  # and routes by it on a sharded MongoDB
    lower = max(filters.created_after or FIRST_YEAR, FIRST_YEAR)
    upper = bucket_start(created_buckets(now + CLOCK_SKEW)[SECONDS]) + SECOND
    for bound in (filters.created_before, after.created + MILLISECOND if after is not None else None):
        upper = min(upper, bound or upper)
    found: list[TaskDocument] = []
    level, quiet_run = SECONDS, 0
    crowded: set[str] = set()  # buckets found to hold more than BUCKET_READ_MAX: not probed again
    while len(found) < count and upper > lower:
        key = created_buckets(upper - MILLISECOND)[level]
        probed_from = upper
        probe = user_bucket(user_id, key) if user_id else key
        query: dict[str, Any] = equalities | {CREATED_BUCKETS_FIELD: probe, "created": created_range(lower, upper)}
        bucket = await tasks.find(query, projection).limit(BUCKET_READ_MAX + 1).to_list()
        if len(bucket) > BUCKET_READ_MAX:
            if level < SECONDS:
                crowded.add(key)
                level, quiet_run = level + 1, 0
                continue
            bucket = await tasks.find(query, projection).to_list()
        if after is not None:
            bucket = [document for document in bucket if after.precedes(document)]
        found += sorted(bucket, key=newest_key, reverse=True)
        upper = bucket_start(key)
        quiet_run = quiet_run + 1 if len(bucket) < SPARSE else 0
        quiet = quiet_run >= QUIET_BEFORE_COARSER.get(level, 1)
        coarser = created_buckets(upper - MILLISECOND)[level - 1] if level > YEARS else ""
        if (
            coarser
            and quiet
            and coarser not in crowded
            and _walked_within(found, level - 1, coarser) < SPARSE
            and _likely_in_rest(len(bucket), probed_from, upper, coarser) <= BUCKET_READ_MAX / 2
        ):
            level, quiet_run = level - 1, 0
    return found[:count]


def _likely_in_rest(tasks: int, top: datetime, bottom: datetime, coarser: str) -> float:
    """How many tasks the rest of the `coarser` bucket (its start to `bottom`) likely holds, at the rate of the span
    just read (`tasks` between `bottom` and `top`). A user with 7 tasks a minute is quiet by the minute, but an hour
    of theirs holds 420: probing it read 201 of them on every page 1 (in the soak scenario, lists slowed fourfold as
    the hour filled)."""
    return tasks * (bottom - bucket_start(coarser)) / (top - bottom)


def _walked_within(found: list[TaskDocument], level: int, key: str) -> int:
    """How many of the tasks found lie in the bucket `key` at `level` (the oldest found do, if any): a probe of it
    reads them again (to drop them), so the walk goes coarser only where they are few."""
    walked = 0
    for document in reversed(found):
        if created_buckets(document["created"])[level] != key:
            break
        walked += 1
    return walked
