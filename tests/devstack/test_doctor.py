"""`make doctor` on this machine: what it reports when a tool is missing, a port is taken or a key is half set."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from devstack.processes import ROOT, Ports, dotenv


def doctor(**environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.doctor"],
        cwd=ROOT,
        env={key: value for key, value in (os.environ | environment).items() if value},
        capture_output=True,
        text=True,
        timeout=30,
    )


def line_of(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line.split()[1:2] == [name])


def test_a_ready_machine_passes_every_check() -> None:
    # The suite's own machine has what `make run` needs (CI ran `make install`), unless a stack holds 8080.
    result = doctor()
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL") and " port " not in line]
    assert failures == [], result.stdout


def test_missing_tools_are_named_with_their_fix(tmp_path: Path) -> None:
    result = doctor(PATH=str(tmp_path))  # an empty PATH: no go, uv or redis-server
    assert result.returncode == 1
    assert line_of(result.stdout, "go").startswith("FAIL") and "apt-get install golang-go" in result.stdout
    assert "redis-server" in line_of(result.stdout, "redis-server") and "make install" in line_of(
        result.stdout, "redis-server"
    )
    assert "problem(s)" in result.stdout


def test_a_taken_port_fails() -> None:
    port = Ports().redis
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = doctor()
    assert result.returncode == 1
    taken = [line for line in result.stdout.splitlines() if f"port {port} " in line]
    assert taken and taken[0].startswith("FAIL") and "in use (redis)" in taken[0], result.stdout


def test_half_a_volcengine_key_pair_fails() -> None:
    result = doctor(VOLCENGINE_ACCESS_KEY="ak", VOLCENGINE_SECRET_KEY="")
    assert "without VOLCENGINE_SECRET_KEY" in line_of(result.stdout, "upstream")
    assert result.returncode == 1


def test_dotenv_reads_key_value_lines(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nOPENAI_API_KEY='sk-x'\nREDIS_URL = redis://h:1/0\nnot a pair\n")
    assert dotenv(env_file) == {"OPENAI_API_KEY": "sk-x", "REDIS_URL": "redis://h:1/0"}
    assert dotenv(tmp_path / "absent") == {}
