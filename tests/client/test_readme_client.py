"""The README's "Use it from Python" and "Use it from the shell" examples, run as printed (the port swapped)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from devstack.stack import LocalStack
from tests.e2e.test_readme import readme_section


def example(heading: str, language: str, stack: LocalStack, user_id: str) -> str:
    """The section's one example, with the test stack's port and the test's own user for `user-1`."""
    (block,) = re.findall(rf"```{language}\n(.*?)```", readme_section(heading), re.S)
    return block.replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports.envoy}").replace("user-1", user_id)


def environment(stack: LocalStack) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return {"PATH": path, "AITASK_API_KEY": stack.admin_key, "NO_PROXY": "127.0.0.1", "HOME": os.environ["HOME"]}


def test_the_python_example_works_as_printed(stack: LocalStack, user_id: str, tmp_path: Path) -> None:
    code = example("## Use it from Python", "python", stack, user_id)
    ran = subprocess.run([sys.executable, "-c", code], env=environment(stack), cwd=tmp_path, capture_output=True,
                         text=True, timeout=180)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "completed fox.png" and (tmp_path / "fox.png").stat().st_size > 0
    assert lines[1].startswith("status ") and lines[-1] == "final completed None"


def test_the_shell_example_works_as_printed(stack: LocalStack, user_id: str, tmp_path: Path) -> None:
    script = example("## Use it from the shell", "bash", stack, user_id)
    ran = subprocess.run(["bash", "-e", "-c", script], env=environment(stack), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "doubao-seedream-3-0-t2i-250415" in ran.stdout and (tmp_path / "fox.png").stat().st_size > 0
    listed = next(line for line in ran.stdout.splitlines() if line.startswith('{"tasks"'))
    (video,) = json.loads(listed)["tasks"]
    assert video["status"] == "completed" and f"deleted {video['id']}" in ran.stdout
