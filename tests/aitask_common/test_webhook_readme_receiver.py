"""The README's ten-line webhook receiver (issue 17), run as printed but on a free port: it accepts a message
signed as the dispatcher signs one and refuses a forged one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from aitask_common.webhook_signing import new_secret
from devstack.processes import free_port
from tests.conftest import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def receiver_source(port: int) -> str:
    (block,) = [found for found in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "Webhook(" in found]
    assert len([line for line in block.splitlines() if line.strip()]) <= 10
    return block.replace("9000", str(port))


def post(port: int, body: str, message_id: str, signature: str, timestamp: datetime) -> httpx.Response:
    headers = {"webhook-id": message_id, "webhook-timestamp": str(int(timestamp.timestamp()))}
    return httpx.post(
        f"http://127.0.0.1:{port}/hook",
        content=body,
        headers=headers | {"webhook-signature": signature},
        trust_env=False,
        timeout=5,
    )


def test_the_readme_receiver_verifies_what_we_sign(tmp_path: Path) -> None:
    port, secret = free_port(), new_secret()
    script = tmp_path / "receiver.py"
    script.write_text(receiver_source(port))
    env = {"WEBHOOK_SECRET": secret, "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        body = json.dumps({"type": "task.completed", "timestamp": "", "data": {"task_id": "T1", "status": "completed"}})
        now = datetime.now(UTC)

        def answered() -> httpx.Response | None:
            try:
                return post(port, body, "msg_1", Webhook(secret).sign("msg_1", now, body), now)
            except httpx.ConnectError:
                return None

        assert wait_until(answered, timeout=10).status_code == 204
        forged = Webhook(new_secret()).sign("msg_2", now, body)
        with pytest.raises(httpx.HTTPError):  # the handler raises: the receiver answers nothing
            post(port, body, "msg_2", forged, now)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert output.splitlines() == ["task.completed T1 completed"]
