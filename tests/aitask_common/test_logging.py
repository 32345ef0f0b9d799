"""Structured logs: JSON lines with the right fields, daily files, midnight rollover, retention."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import structlog

from aitask_common.logfiles import DailyFileHandler
from aitask_common.logging import bound_log_context, configure_logging, get_logger
from aitask_common.settings import ServiceSettings


def local_timestamp(text: str) -> float:
    return time.mktime(datetime.fromisoformat(text).timetuple())


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = saved
    structlog.reset_defaults()


def test_every_line_is_json_with_time_level_message_service_and_task_id(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("unit", ServiceSettings(log_dir=str(tmp_path), log_level="INFO"))
    log = get_logger("test")
    with bound_log_context(task_id="01TASK"):
        log.info("task created", model="m1")
    log.debug("not shown at INFO")
    logging.getLogger("library").warning("from %s", "stdlib")

    today = datetime.now().strftime("%Y-%m-%d")
    lines = (tmp_path / f"unit-{today}.log").read_text().splitlines()
    assert lines == capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 2
    first, second = events
    assert first["message"] == "task created" and first["task_id"] == "01TASK" and first["model"] == "m1"
    assert first["level"] == "info" and first["service"] == "unit"
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second["message"] == "from stdlib" and second["level"] == "warning" and "task_id" not in second


def test_log_file_off_writes_stdout_only(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Containers set LOG_FILE=off: a file per pod fills its emptyDir under load and gets it evicted.
    monkeypatch.setenv("LOG_FILE", "off")
    configure_logging("container", ServiceSettings(log_dir=str(tmp_path / "logs")))
    get_logger("test").info("to stdout")
    assert json.loads(capsys.readouterr().out)["message"] == "to stdout"
    assert not (tmp_path / "logs").exists()


def test_log_level_is_respected(tmp_path: Path, restore_logging: None) -> None:
    configure_logging("quiet", ServiceSettings(log_dir=str(tmp_path), log_level="ERROR"))
    get_logger("test").warning("dropped")
    get_logger("test").error("kept")
    (log_file,) = tmp_path.glob("quiet-*.log")
    assert [json.loads(line)["message"] for line in log_file.read_text().splitlines()] == ["kept"]


def test_new_file_at_local_midnight_without_restart(tmp_path: Path) -> None:
    clock = FakeClock(local_timestamp("2026-03-09T23:59:58"))
    handler = DailyFileHandler(tmp_path, "svc", keep_days=7, clock=clock)
    logger = logging.Logger("rotation")
    logger.addHandler(handler)
    logger.warning("before midnight")
    clock.now = local_timestamp("2026-03-10T00:00:01")
    logger.warning("after midnight")
    clock.now = local_timestamp("2026-03-10T13:00:00")
    logger.warning("same day")
    handler.close()
    assert (tmp_path / "svc-2026-03-09.log").read_text() == "before midnight\n"
    assert (tmp_path / "svc-2026-03-10.log").read_text() == "after midnight\nsame day\n"


def test_retention_removes_only_this_services_old_files(tmp_path: Path) -> None:
    today = datetime(2026, 5, 20, 12, 0)
    for days_ago in (0, 6, 7, 30):
        (tmp_path / f"svc-{(today - timedelta(days=days_ago)):%Y-%m-%d}.log").write_text("x")
    (tmp_path / "other-2026-01-01.log").write_text("another service's file")
    (tmp_path / "svc-notes.log").write_text("not a dated log")
    handler = DailyFileHandler(tmp_path, "svc", keep_days=7, clock=FakeClock(today.timestamp()))
    handler.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "other-2026-01-01.log",
        "svc-2026-05-14.log",
        "svc-2026-05-20.log",
        "svc-notes.log",
    ]


def test_rollover_also_applies_retention(tmp_path: Path) -> None:
    clock = FakeClock(local_timestamp("2026-07-01T10:00:00"))
    handler = DailyFileHandler(tmp_path, "svc", keep_days=2, clock=clock)
    logger = logging.Logger("retention")
    logger.addHandler(handler)
    for day in ("2026-07-01", "2026-07-02", "2026-07-03"):
        clock.now = local_timestamp(f"{day}T10:00:00")
        logger.warning(day)
    handler.close()
    assert sorted(os.listdir(tmp_path)) == ["svc-2026-07-02.log", "svc-2026-07-03.log"]
