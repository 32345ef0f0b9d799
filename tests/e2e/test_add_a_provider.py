"""The README's "Adding a provider" guide, proven: its code (kept in tests/e2e/provider_echo/) runs as a provider
of its own beside the stack, and a task on its model completes through REST with no other service changed."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.processes import ROOT, Process, free_port
from devstack.stack import LocalStack
from tests.conftest import wait_for_status

ECHO = Path(__file__).with_name("provider_echo")


def guide_files() -> dict[str, str]:
    """The code blocks of the README's guide, by the file each is marked as."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- file: provider_echo/(\S+) -->\n```\w+\n(.*?)```", readme, re.DOTALL)
    return dict(blocks)


def test_the_guide_shows_the_code_the_test_runs() -> None:
    files = guide_files()
    assert set(files) == {"catalogue.toml", "__main__.py"}
    for name, text in files.items():
        assert text == (ECHO / name).read_text(), f"README's {name} differs from tests/e2e/provider_echo/{name}"


@pytest.fixture
def echo_provider(stack: LocalStack) -> Iterator[None]:
    port = free_port()
    env = {"PORT": str(port), "METRICS_PORT": "0"}
    stack.definitions["provider_echo"] = Process(
        "provider_echo", [sys.executable, "-m", "tests.e2e.provider_echo"], env, port
    )
    stack.start("provider_echo")
    try:
        yield
    finally:
        stack.stop("provider_echo")


def test_a_task_on_the_new_providers_model_completes(
    stack: LocalStack, echo_provider: None, rest: httpx.Client, user_id: str
) -> None:
    body = {"prompt": "hello new vendor", "user_id": user_id, "provider": "echo", "model": "echo-1", "max_tokens": 50}
    response = create_once_known(rest, body)
    assert response.status_code == 200, response.text
    result = wait_for_status(rest, response.json()["data"]["task_id"], {"completed", "failed"})
    assert result["status"] == "completed", result["error_message"]
    assert result["text_result"] == "echo: hello new vendor"
    assert result["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    # The catalogue's limits apply to it as to every model.
    too_many = create_once_known(rest, body | {"max_tokens": 5000})
    assert too_many.status_code == 400 and too_many.json()["message"].startswith("max_tokens:"), too_many.text


def create_once_known(rest: httpx.Client, body: dict[str, object], timeout: float = 10.0) -> httpx.Response:
    """POST a text task, again while a task-service replica has not yet read the new provider's catalogue from the
    registry (each re-reads it every CATALOGUE_REFRESH_SECONDS)."""
    deadline = time.monotonic() + timeout
    while True:
        response = rest.post("/api/v1/ai/text/task", json=body)
        if "unknown provider 'echo'" not in response.text or time.monotonic() > deadline:
            return response
        time.sleep(0.2)
