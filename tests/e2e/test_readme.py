"""The README's curl examples, run as printed (only the port is swapped for the test stack's)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx

from devstack.stack import LocalStack
from tests.conftest import wait_for_status

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_curl_commands() -> list[str]:
    """Every `curl …` command (with continuation lines) in the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = []
    for block in blocks:
        for command in re.split(r"(?<!\\)\n", block):
            if command.strip().startswith("curl "):
                commands.append(command.strip())
    return commands


def run(command: str, stack: LocalStack, task_id: str = "") -> dict:
    command = command.replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports.envoy}")
    finished = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TASK_ID": task_id, "NO_PROXY": "127.0.0.1", "AITASK_API_KEY": stack.admin_key},
        check=True,
    )
    return json.loads(finished.stdout)


def test_readme_examples_work_as_printed(stack: LocalStack, rest: httpx.Client) -> None:
    create, result, listing, delete = readme_curl_commands()
    created = run(create, stack)
    assert created["success"] is True and created["data"]["status"] == "pending"
    task_id = created["data"]["task_id"]

    wait_for_status(rest, task_id, {"completed"})
    completed = run(result, stack, task_id)
    assert completed["data"]["status"] == "completed" and completed["data"]["image_url"]

    listed = run(listing, stack)
    assert task_id in [task["task_id"] for task in listed["data"]["tasks"]]
    assert all(task["type"] == "image" for task in listed["data"]["tasks"])

    assert run(delete, stack, task_id) == {"success": True, "data": {"task_id": task_id}, "message": "task deleted"}
    assert run(result, stack, task_id)["code"] == "NOT_FOUND"
