"""Asynchronous (video) jobs whose state is a pure function of the clock.

A job is one small record: when it was created, how long it takes, whether it
is doomed to fail, and vendor-specific display fields. Its phase (queued,
running, done) is computed on every read from the elapsed time, so there are
no background tasks and thousands of in-flight jobs cost one dict entry each.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The first fifth of a job's lifetime is spent "queued", the rest "running".
QUEUED_FRACTION = 0.2


class Phase(enum.Enum):
    """Vendor-neutral job phase; each vendor maps it to its own status strings."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Job:
    """One asynchronous generation job."""

    id: str
    vendor: str
    duration_s: float
    fail: bool = False
    created_wall: float = field(default_factory=time.time)
    created_mono: float = field(default_factory=time.monotonic)
    cancelled_wall: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Seconds since creation (monotonic clock)."""
        return time.monotonic() - self.created_mono

    def phase(self) -> Phase:
        """The current phase, derived from the elapsed time."""
        if self.cancelled_wall is not None:
            return Phase.CANCELLED
        elapsed = self.elapsed()
        if elapsed >= self.duration_s:
            return Phase.FAILED if self.fail else Phase.SUCCEEDED
        if elapsed < self.duration_s * QUEUED_FRACTION:
            return Phase.QUEUED
        return Phase.RUNNING

    def progress(self) -> float:
        """Fraction of the running part completed, 0.0 .. 1.0."""
        if self.duration_s <= 0:
            return 1.0
        start = self.duration_s * QUEUED_FRACTION
        span = self.duration_s - start
        return min(1.0, max(0.0, (self.elapsed() - start) / span)) if span > 0 else 1.0

    def remaining_s(self) -> float:
        """Seconds until the job finishes (0 when it already has)."""
        return max(0.0, self.duration_s - self.elapsed())

    def updated_wall(self) -> float:
        """Wall-clock time of the last phase change, for ``updated_at`` fields."""
        if self.cancelled_wall is not None:
            return self.cancelled_wall
        phase = self.phase()
        if phase is Phase.QUEUED:
            return self.created_wall
        if phase is Phase.RUNNING:
            return self.created_wall + self.duration_s * QUEUED_FRACTION
        return self.created_wall + self.duration_s


class JobStore:
    """All jobs of all vendors, keyed by id (vendor ids never collide: they have distinct formats)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def unique_id(self, make: Callable[[], str]) -> str:
        """Call ``make`` until it returns an id not in use (short vendor ids can collide)."""
        while True:
            job_id = make()
            if job_id not in self._jobs:
                return job_id

    def add(self, job: Job) -> Job:
        """Store ``job`` and return it."""
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str, vendor: str) -> Job | None:
        """The job ``job_id`` if it exists and belongs to ``vendor``."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.vendor == vendor else None

    def remove(self, job_id: str) -> None:
        """Forget a job."""
        self._jobs.pop(job_id, None)

    def of_vendor(self, vendor: str) -> list[Job]:
        """Every job of ``vendor``, newest first."""
        jobs = [job for job in self._jobs.values() if job.vendor == vendor]
        jobs.sort(key=lambda job: job.created_mono, reverse=True)
        return jobs

    def clear(self) -> None:
        """Forget every job."""
        self._jobs.clear()

    def __len__(self) -> int:
        return len(self._jobs)
