"""Structured JSON logging: one event per line, with service and task_id where there is one."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from structlog.typing import EventDict

from aitask_common.logfiles import DailyFileHandler
from aitask_common.settings import ServiceSettings
from aitask_common.tracing import current_trace_id


def configure_logging(service: str, settings: ServiceSettings) -> None:
    """Send every log record (ours and libraries') as one JSON object per line to stdout
    and, unless LOG_FILE is off, to the service's daily file under LOG_DIR."""
    shared_processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        _add_time,
        structlog.processors.EventRenamer("message"),
        _add_trace_id,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared_processors],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _add_service(service),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if settings.log_file:
        handlers.append(DailyFileHandler(Path(settings.log_dir), service, settings.log_keep_days))
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(settings.log_level.upper())
    structlog.configure(
        processors=[*shared_processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _add_time(_logger: Any, _name: str, event: EventDict) -> EventDict:
    # A stdlib record is formatted once per handler: stamp it with its own creation time, not "now".
    record = event.get("_record")
    moment = datetime.fromtimestamp(record.created, UTC) if record is not None else datetime.now(UTC)
    event.setdefault("time", moment.isoformat(timespec="microseconds").replace("+00:00", "Z"))
    return event


def _add_trace_id(_logger: Any, _name: str, event: EventDict) -> EventDict:
    trace_id = current_trace_id()
    if trace_id is not None:
        event["trace_id"] = trace_id
    return event


def _add_service(service: str) -> structlog.typing.Processor:
    def add(_logger: Any, _name: str, event: EventDict) -> EventDict:
        event["service"] = service
        return event

    return add


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger; bind task_id with `bound_log_context`."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


class QuietWarnings:
    """Warns about a failing dependency at most once per `interval_seconds` and logs the rest at debug level:
    a Redis outage must not flood the logs with one warning per request."""

    def __init__(self, logger: structlog.stdlib.BoundLogger, interval_seconds: float = 60.0) -> None:
        self.logger = logger
        self.interval_seconds = interval_seconds
        self._quiet_until = 0.0

    def __call__(self, message: str, error: BaseException) -> None:
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + self.interval_seconds
            self.logger.warning(message, error=str(error))
        else:
            self.logger.debug(message, error=str(error))


@contextmanager
def bound_log_context(**values: Any) -> Iterator[None]:
    """Add `values` to every log line inside the block, then restore what was there.

    structlog's own `bound_contextvars` copies the whole context on entry, which showed
    in the profiles of per-request and per-job paths; resetting the tokens does not.
    """
    tokens = structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
