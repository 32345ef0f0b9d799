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


def readme_section(heading: str) -> str:
    """The README's text under `heading` (a whole "## …" line), up to the next section of that level."""
    level = heading.split(" ")[0]
    text = README.read_text().split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n{level} ", text, maxsplit=1)[0]


def readme_curl_commands(heading: str = "## Try it") -> list[str]:
    """Every `curl …` command (with continuation lines) in the bash blocks of one README section."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(heading), re.S)
    commands = []
    for block in blocks:
        for command in re.split(r"(?<!\\)\n", block):
            if command.strip().startswith("curl "):
                commands.append(command.strip())
    return commands


def run(command: str, stack: LocalStack, task_id: str = "") -> dict:
    return json.loads(run_raw(command, stack, task_id))  # type: ignore[no-any-return]


def run_raw(command: str, stack: LocalStack, task_id: str = "") -> str:
    """What the command prints, run as printed (the port swapped, `<task_id>` read as $TASK_ID)."""
    command = command.replace("127.0.0.1:8080", f"127.0.0.1:{stack.ports.envoy}").replace("<task_id>", "$TASK_ID")
    finished = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TASK_ID": task_id, "NO_PROXY": "127.0.0.1", "AITASK_API_KEY": stack.admin_key},
        check=True,
    )
    return finished.stdout


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


def test_the_lifecycle_and_model_examples_answer_as_the_readme_says(stack: LocalStack, rest: httpx.Client) -> None:
    """Every curl line of "Task lifecycle" and "Models" runs against a completed task and answers in the envelope
    (or as Server-Sent Events, or the OpenAPI document); the refusals the text promises are refusals."""
    created = rest.post(
        "/api/v1/ai/image/task",
        json={
            "prompt": "readme",
            "user_id": "readme-user",
            "provider": "volcengine",
            "model": "doubao-seedream-3-0-t2i-250415",
        },
    )
    task_id = created.json()["data"]["task_id"]
    wait_for_status(rest, task_id, {"completed"})
    commands = readme_curl_commands("## Task lifecycle") + readme_curl_commands("## Models")
    assert len(commands) >= 12
    for command in commands:
        printed = run_raw(command, stack, task_id)
        if "text/event-stream" in command:
            events = [
                json.loads(line.removeprefix("data: ")) for line in printed.splitlines() if line.startswith("data: ")
            ]
            assert [event["event"] for event in events] == ["final"], printed
        elif "openapi.json" in command:
            assert '"openapi": "3' in printed
        elif "/cancel" in command:  # the task is completed: a cancel is refused, naming its status
            answer = json.loads(printed)
            assert answer["code"] == "FAILED_PRECONDITION" and "completed" in answer["message"], command
        elif '"model":"sora"' in command:
            answer = json.loads(printed)
            assert answer["code"] == "INVALID_ARGUMENT" and "volcengine/jimeng_vgfm_t2v_l20" in answer["message"]
        else:
            assert json.loads(printed)["success"] is True, (command, printed)


def test_the_queue_examples_pause_and_resume_as_the_readme_says(stack: LocalStack) -> None:
    listing, pause, resume, audit = readme_curl_commands("## Operating the queues")
    try:
        assert [queue["priority"] for queue in run(listing, stack)["data"]] == ["critical", "default", "low"]
        paused = run(pause, stack)["data"]
        assert (paused["priority"], paused["paused"]) == ("low", True) and run(listing, stack)["data"][2]["paused"]
        assert run(resume, stack)["data"]["paused"] is False
        latest = run(audit, stack)["data"][:2]
        assert [(entry["action"], entry["target"]) for entry in latest] == [
            ("ResumeQueue", "queue low"),
            ("PauseQueue", "queue low"),
        ]
    finally:
        with stack.rest() as rest:
            rest.post("/api/v1/admin/queues/low/resume", json={})


def test_the_task_and_provider_examples_answer_as_the_readme_says(stack: LocalStack, rest: httpx.Client) -> None:
    search, timeline, providers = readme_curl_commands("## Looking into tasks and providers")
    body = {"prompt": "a lighthouse for the README", "user_id": "readme-admin", "provider": "volcengine"}
    created = rest.post("/api/v1/ai/image/task", json=body | {"model": "doubao-seedream-3-0-t2i-250415"})
    task_id = created.json()["data"]["task_id"]
    wait_for_status(rest, task_id, {"completed"})
    found = run(search, stack)["data"]["tasks"]
    assert 1 <= len(found) <= 5 and {task["status"] for task in found} == {"completed"}
    events = [event["event"] for event in run(timeline, stack, task_id)["data"]["events"]]
    assert events[0] == "created" and "completed" in events
    assert {"volcengine", "openai"} <= {instance["provider"] for instance in run(providers, stack)["data"]}
