"""The `aitask` command driven as a user would: every command as a subprocess with `--json` (one document on
stdout, the exit codes a script acts on), and one session in a real terminal (tmux) that shows the live status
line and the tables."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import free_port
from devstack.stack import LocalStack
from tests.client.conftest import gateway_url
from tests.conftest import wait_until
from tests.e2e.helpers import SEEDREAM, faults
from tests.e2e.test_billing import PRICES
from tests.e2e.test_cancel import IMAGES, JIMENG_VIDEO

AITASK = str(Path(sys.executable).parent / "aitask")


def environment(stack: LocalStack, api_key: str) -> dict[str, str]:
    return {**os.environ, "AITASK_URL": gateway_url(stack), "AITASK_API_KEY": api_key}


def run(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AITASK, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def document(result: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a --json run prints (json.loads refuses anything more)."""
    return json.loads(result.stdout)


@pytest.fixture
def env(stack: LocalStack, api_key: str) -> dict[str, str]:
    return environment(stack, api_key)


def test_image_creates_waits_and_saves_the_output(env: dict[str, str], tmp_path: Path) -> None:
    result = run(env, "image", "a red fox in the snow", "--model", SEEDREAM["model"], "--size", "1024x1024",
                 "-o", str(tmp_path / "fox.png"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    task = document(result)
    assert task["status"] == "completed" and task["parameters"]["size"] == "1024x1024"
    saved = Path(task["saved"])
    assert saved == tmp_path / "fox.png"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == task["output"]["sha256"]
    assert result.stderr == ""  # no progress line when stderr is not a terminal


def test_video_and_text_and_the_default_model(env: dict[str, str], tmp_path: Path) -> None:
    video = run(env, "video", "waves", "--model", JIMENG_VIDEO["model"], "--aspect-ratio", "16:9", "--json",
                cwd=tmp_path)  # fmt: skip
    assert video.returncode == 0, video.stderr
    saved = Path(document(video)["saved"])
    assert saved.parent == tmp_path and saved.suffix == ".mp4" and saved.stat().st_size > 0

    text = run(env, "text", "a haiku about queues", "--model", "gpt-5.5")
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() and not text.stdout.lstrip().startswith("{")
    # No --model: the first available model of the type.
    chosen = document(run(env, "text", "hello", "--json"))
    assert chosen["status"] == "completed" and chosen["type"] == "text" and chosen["text"]


def test_no_wait_get_watch_ls_cancel_rm(stack: LocalStack, env: dict[str, str]) -> None:
    created = run(env, "image", "later", "--model", SEEDREAM["model"], "--no-wait", "--json")
    assert created.returncode == 0, created.stderr
    task_id = document(created)["id"]
    assert document(created)["status"] == "pending"
    plain = run(env, "image", "later too", "--model", SEEDREAM["model"], "--no-wait")
    assert plain.returncode == 0 and len(plain.stdout.strip()) == 26  # a bare ULID, for `$(aitask … --no-wait)`

    watched = run(env, "watch", task_id, "--json")
    assert watched.returncode == 0, watched.stderr
    history = document(watched)
    assert history["events"][-1]["event"] == "final" and history["task"]["status"] == "completed"

    got = run(env, "get", task_id, "--json")
    assert got.returncode == 0 and document(got)["id"] == task_id
    listed = document(run(env, "ls", "--type", "image", "--json"))["tasks"]
    assert task_id in [task["id"] for task in listed]
    assert document(run(env, "ls", "--status", "failed", "--json")) == {"tasks": []}
    models = document(run(env, "models", "--type", "video", "--json"))["models"]
    assert models and {model["type"] for model in models} == {"video"}

    refused = run(env, "cancel", task_id, "--json")
    assert refused.returncode == 1 and document(refused)["error"]["code"] == "FAILED_PRECONDITION"
    removed = run(env, "rm", task_id, "--json")
    assert removed.returncode == 0 and document(removed) == {"deleted": task_id}
    gone = run(env, "get", task_id, "--json")
    assert gone.returncode == 1 and document(gone)["error"]["code"] == "NOT_FOUND"

    with faults(stack, IMAGES, latency_s=5.0):
        pending = document(run(env, "image", "to cancel", "--model", SEEDREAM["model"], "--no-wait", "--json"))
        cancelled = run(env, "cancel", pending["id"], "--json")
    assert cancelled.returncode == 0 and document(cancelled)["status"] == "cancelled"
    assert run(env, "get", pending["id"], "--json").returncode == 1  # a cancelled task is exit 1


def test_exit_codes_a_script_can_act_on(stack: LocalStack, env: dict[str, str]) -> None:
    missing = run(env, "image")
    assert missing.returncode == 2 and "Missing argument 'prompt'" in missing.stderr
    bad = run(env, "image", "x", "--model", SEEDREAM["model"], "--size", "7x7", "--json")
    assert bad.returncode == 2 and document(bad)["error"]["field"] == "size"

    with faults(stack, IMAGES, error_rate=1.0, error_status=400):
        failed = run(env, "image", "refused upstream", "--model", SEEDREAM["model"], "--json")
    assert failed.returncode == 1 and document(failed)["status"] == "failed" and document(failed)["error"]

    nobody = run({**env, "AITASK_URL": f"http://127.0.0.1:{free_port()}"}, "models", "--json")
    assert nobody.returncode == 3 and document(nobody)["error"]["code"] == "UNAVAILABLE"
    stranger = run({**env, "AITASK_API_KEY": "ak_nope_nope"}, "models", "--json")
    assert stranger.returncode == 3 and document(stranger)["error"]["code"] == "UNAUTHENTICATED"
    no_url = run({key: value for key, value in env.items() if key != "AITASK_URL"}, "models")
    assert no_url.returncode == 2 and "AITASK_URL" in no_url.stderr


def test_balance_and_ledger(env: dict[str, str], tmp_path: Path) -> None:
    assert run(env, "image", "a priced fox", "--model", SEEDREAM["model"], "--json", cwd=tmp_path).returncode == 0
    settled = wait_until(lambda: (now := document(run(env, "balance", "--json")))["reserved"] == 0 and now, timeout=30)
    assert settled["available"] == settled["balance"] > 0
    entries = document(run(env, "ledger", "--limit", "2", "--json"))["entries"]
    price = PRICES[("volcengine", SEEDREAM["model"])].per_image
    assert [entry["reason"] for entry in entries] == ["settle", "reserve"] and entries[0]["amount"] == -price
    shown = run(env, "balance")
    assert shown.returncode == 0 and f"balance {settled['balance']}, reserved 0" in shown.stdout
    table = run(env, "ledger", "--limit", "2")
    assert table.returncode == 0 and "settle" in table.stdout and f"-{price}" in table.stdout


def test_every_command_has_help_with_an_example(env: dict[str, str]) -> None:
    for command in ("image", "video", "text", "get", "watch", "cancel", "ls", "rm", "models", "balance", "ledger"):
        shown = run(env, command, "--help")
        assert shown.returncode == 0 and "Example: aitask " in shown.stdout, command


# --- a real terminal ------------------------------------------------------------
class Terminal:
    """A tmux session running bash with the gateway's environment: type into it, read its screen."""

    def __init__(self, env: dict[str, str]) -> None:
        self.name = f"aitask-{uuid.uuid4().hex[:8]}"
        variables = [f"{key}={env[key]}" for key in ("AITASK_URL", "AITASK_API_KEY")]
        path = f"PATH={Path(AITASK).parent}:{os.environ['PATH']}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "160", "-y", "50",
                        "env", *variables, path, "TERM=xterm-256color", "bash", "--norc", "--noprofile"],
                       check=True)  # fmt: skip

    def type(self, line: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, line, "Enter"], check=True)

    def screen(self) -> str:
        shown = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return shown.stdout

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False)


@pytest.fixture
def terminal(env: dict[str, str]) -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: scripts/install-deps.sh installs it")
    session = Terminal(env)
    try:
        yield session
    finally:
        session.close()


def test_a_terminal_shows_the_live_status_line_and_the_tables(
    stack: LocalStack, terminal: Terminal, tmp_path: Path
) -> None:
    with faults(stack, IMAGES, latency_s=4.0):
        terminal.type(f"aitask image 'a slow fox' --model {SEEDREAM['model']} -o {tmp_path}/fox.png; echo exit=$?")
        # While it runs: the task id, its status and an elapsed clock, redrawn in place.
        line = wait_until(lambda: next((row for row in terminal.screen().splitlines() if "processing" in row), None))
        assert "0:00:0" in line
        wait_until(lambda: "exit=0" in terminal.screen(), timeout=60)
    screen = terminal.screen()
    assert f"{tmp_path}/fox.png" in screen and (tmp_path / "fox.png").stat().st_size > 0

    terminal.type("clear; aitask models --type image")

    def drawn() -> str | None:
        screen = terminal.screen()
        return screen if "available" in screen and SEEDREAM["model"] in screen else None

    table = wait_until(drawn, timeout=30)
    assert "┃" in table or "│" in table  # drawn as a table
    assert "provider" in table and "available" in table
