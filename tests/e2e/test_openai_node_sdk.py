"""The official OpenAI Node SDK (`openai` from npm, pinned in tests/e2e/node/package.json and installed there by
scripts/install-deps.sh), run with Node against the stack through Envoy: images, chat, models and videos; and
the README's three lines of Python and of JavaScript, as printed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys

import httpx
import pytest

from devstack.processes import ROOT
from devstack.stack import LocalStack
from tests.e2e.test_readme import readme_section

NODE_TESTS = ROOT / "tests" / "e2e" / "node"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed (scripts/install-deps.sh installs it)")
def test_the_node_sdk_works_unchanged(stack: LocalStack, user_id: str) -> None:
    assert (NODE_TESTS / "node_modules" / "openai").is_dir(), "run scripts/install-deps.sh (npm ci in tests/e2e/node)"
    key = stack.create_api_key(user_id, name="node sdk")
    ran = subprocess.run(
        [str(NODE), "door.mjs"],
        cwd=NODE_TESTS,
        env=stack.env | {"AITASK_BASE_URL": f"http://127.0.0.1:{stack.ports.envoy}/v1", "AITASK_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout)
    assert httpx.get(got["image_url"], trust_env=False).status_code == 200
    assert got["image_b64_length"] > 100
    assert got["chat_text"] and got["chat_total_tokens"] > 0
    assert got["streamed"] and got["last_finish_reason"] == "stop"
    assert {"doubao-pro-4k", "gpt-4", "jimeng_vgfm_t2v_l20", "dall-e-3"} <= set(got["models"])
    video = got["video"]
    # Queued when created, unless a worker took it before the door read it back (OpenAI's own states, both).
    assert video["created_status"] in ("queued", "in_progress"), video
    assert video["status"] == "completed" and video["size"] == "720x1280", video
    assert got["not_found"] == {"name": "NotFoundError", "status": 404, "code": "model_not_found"}

    with stack.rest() as rest:
        tasks = rest.get("/api/v1/ai/tasks", params={"user_id": user_id, "limit": 100}).json()["data"]["tasks"]
        video_task = rest.get(f"/api/v1/ai/task/result/{video['id']}").json()["data"]
    # Every call the SDK made is a task of the key's user: two images, two chats, one video.
    assert sorted(task["type"] for task in tasks) == ["image", "image", "text", "text", "video"]
    assert got["chat_id"].removeprefix("chatcmpl-") in {task["task_id"] for task in tasks}
    original = httpx.get(video_task["video_url"], trust_env=False).content
    assert got["video_sha256"] == hashlib.sha256(original).hexdigest()


def _readme_block(language: str) -> str:
    """The one `language` block of the README's "Use it with the OpenAI SDK", its port swapped for the stack's."""
    (block,) = re.findall(rf"```{language}\n(.*?)```", readme_section("## Use it with the OpenAI SDK"), re.S)
    assert len([line for line in block.splitlines() if line.strip()]) == 3, block
    return block


def test_readme_python_lines_work_as_printed(stack: LocalStack, user_id: str) -> None:
    code = _readme_block("python").replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports.envoy}")
    key = stack.create_api_key(user_id, name="readme python")
    ran = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1", "AITASK_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    assert _user_task_models(stack, user_id) == ["gpt-4"]


@pytest.mark.skipif(NODE is None, reason="node is not installed (scripts/install-deps.sh installs it)")
def test_readme_javascript_lines_work_as_printed(stack: LocalStack, user_id: str) -> None:
    code = _readme_block("javascript").replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports.envoy}")
    key = stack.create_api_key(user_id, name="readme javascript")
    # Beside node_modules, where `import "openai"` finds the SDK.
    script = NODE_TESTS / f"readme-{user_id}.mjs"
    script.write_text(code)
    try:
        ran = subprocess.run(
            [str(NODE), script.name],
            cwd=NODE_TESTS,
            env={"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1", "AITASK_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        script.unlink()
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    assert _user_task_models(stack, user_id) == ["gpt-4"]


def _user_task_models(stack: LocalStack, user_id: str) -> list[str]:
    with stack.rest() as rest:
        tasks = rest.get("/api/v1/ai/tasks", params={"user_id": user_id}).json()["data"]["tasks"]
    return [task["model"] for task in tasks]
