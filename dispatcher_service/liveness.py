"""Worker deadlines, for the dispatcher's liveness probe to notice a stuck worker.

The pool's parent serves /metrics whatever its workers do, and RQ's pool restarts only workers that
die, not workers that hang. So each worker process writes, into a file named after its pid under
WORKER_DEADLINE_DIR, the time (Unix seconds) by which it will show progress again: idle, its next
dequeue round plus a margin (the BLPOP is capped at IDLE_BEAT_SECONDS); busy, its job's RQ timeout
plus a margin (RQ kills the job at its timeout; a worker past that is wedged). The probe
(`python /app/healthcheck.py workers DIR`, deploy/docker/healthcheck.py) fails when a live worker's
deadline has passed; files of exited workers are ignored.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rq.queue import Queue

# An idle worker's BLPOP returns this often (instead of RQ's 405 s), so its deadline moves even with no job.
IDLE_BEAT_SECONDS = 30
# Slack for a loaded machine: scheduling delays, a slow Redis round trip, the time between RQ's kill and cleanup.
MARGIN_SECONDS = 60


class WorkerDeadline:
    """This worker process's deadline file (nothing is written when `directory` is empty)."""

    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / str(os.getpid()) if directory else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def idle(self) -> None:
        """Waiting for jobs: progress due within the next dequeue round."""
        self._write(IDLE_BEAT_SECONDS + MARGIN_SECONDS)

    def busy(self, job_timeout: float | None) -> None:
        """Running a job: progress due when RQ's timeout would have ended it."""
        self._write((job_timeout or Queue.DEFAULT_TIMEOUT) + MARGIN_SECONDS)

    def remove(self) -> None:
        """The worker leaves: nothing to watch."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _write(self, seconds: float) -> None:
        if self.path is None:
            return
        # Written whole then renamed: the probe never reads half a number.
        partial = self.path.with_suffix(".partial")
        partial.write_text(f"{time.time() + seconds:.3f}")
        partial.replace(self.path)
