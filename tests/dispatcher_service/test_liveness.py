"""The dispatcher's liveness: workers' deadline files and the probe command that reads them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from dispatcher_service.liveness import IDLE_BEAT_SECONDS, MARGIN_SECONDS, WorkerDeadline

ROOT = Path(__file__).resolve().parents[2]
PROBE = [sys.executable, str(ROOT / "deploy" / "docker" / "healthcheck.py"), "workers"]


def probe(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROBE, str(directory)], capture_output=True, text=True, timeout=30)


def test_a_worker_on_time_passes_and_a_stuck_one_fails(tmp_path: Path) -> None:
    deadline = WorkerDeadline(str(tmp_path))
    assert probe(tmp_path).returncode == 0, "no worker yet (still waiting for the datastores): alive"
    deadline.idle()
    assert float(deadline.path.read_text()) >= time.time() + IDLE_BEAT_SECONDS + MARGIN_SECONDS - 5  # type: ignore[union-attr]
    assert probe(tmp_path).returncode == 0
    deadline.busy(job_timeout=None)  # RQ's default timeout
    assert probe(tmp_path).returncode == 0
    # This (live) process as a worker whose job outlived RQ's timeout and the margin.
    deadline.path.write_text(f"{time.time() - 1:.3f}")  # type: ignore[union-attr]
    result = probe(tmp_path)
    assert result.returncode == 1 and "past its deadline" in result.stderr
    deadline.remove()
    assert probe(tmp_path).returncode == 0


def test_files_of_exited_workers_are_ignored(tmp_path: Path) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    (tmp_path / str(exited.pid)).write_text("0")
    assert probe(tmp_path).returncode == 0


def test_an_empty_directory_setting_writes_nothing(tmp_path: Path) -> None:
    deadline = WorkerDeadline("")
    deadline.idle()
    deadline.busy(10)
    assert deadline.path is None
