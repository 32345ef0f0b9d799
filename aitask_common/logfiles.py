"""Daily log files: `logs/<service>-YYYY-MM-DD.log`, a new file at local midnight, old ones removed.

The stdlib's TimedRotatingFileHandler does the midnight arithmetic; only the
naming differs: each day is written under its own dated name from the start
(nothing is renamed), so the forked dispatcher workers can all append to the
same file and roll over independently.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import date, timedelta
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path

DATED_NAME = re.compile(r"-(\d{4}-\d{2}-\d{2})\.log$")


class DailyFileHandler(TimedRotatingFileHandler):
    """Writes `<directory>/<service>-<local date>.log`; keeps `keep_days` days of files."""

    def __init__(self, directory: Path, service: str, keep_days: int, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.service = service
        self.keep_days = keep_days
        self.clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        now = clock()
        super().__init__(self.path_for(now), when="midnight", encoding="utf-8")
        self.rolloverAt = self.computeRollover(int(now))
        self.remove_expired(now)

    def path_for(self, moment: float) -> Path:
        """The file that records logged at `moment` belong in."""
        return self.directory / f"{self.service}-{time.strftime('%Y-%m-%d', time.localtime(moment))}.log"

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 - stdlib override
        return self.clock() >= self.rolloverAt

    def doRollover(self) -> None:  # noqa: N802 - stdlib override
        if self.stream:
            self.stream.close()
        now = self.clock()
        self.baseFilename = str(self.path_for(now).resolve())
        self.stream = self._open()
        self.rolloverAt = self.computeRollover(int(now))
        self.remove_expired(now)

    def remove_expired(self, now: float) -> None:
        """Delete this service's files dated more than `keep_days` days before `now`'s date."""
        oldest_kept = date.fromtimestamp(now) - timedelta(days=self.keep_days - 1)
        for path in self.directory.glob(f"{self.service}-*.log"):
            match = DATED_NAME.search(path.name)
            if match is None or path.name != f"{self.service}-{match.group(1)}.log":
                continue  # another service's file, or not a dated log
            if date.fromisoformat(match.group(1)) < oldest_kept:
                path.unlink(missing_ok=True)
