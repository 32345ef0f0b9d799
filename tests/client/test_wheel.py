"""The client as a user installs it: its wheel built with `uv build`, installed into a fresh venv that holds none of
the rest of the project (the network off: uv's cache, warmed by scripts/install-deps.sh, at the lock's versions),
and used from there against the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from devstack.stack import LocalStack
from tests.client.conftest import gateway_url
from tests.e2e.helpers import SEEDREAM

ROOT = Path(__file__).resolve().parents[2]


def uv(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["uv", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"uv {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    uv("build", "--wheel", "--offline", "--out-dir", str(out), "client")
    (built,) = out.glob("aitask_client-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    place = tmp_path_factory.mktemp("fresh")
    pins = place / "pins.txt"
    uv("export", "--frozen", "--no-hashes", "--no-emit-project", "--no-emit-package", "aitask-client", "--quiet",
       "-o", str(pins))  # fmt: skip
    venv = place / "venv"
    uv("venv", "--offline", "--quiet", "--python", "3.11", str(venv))
    uv("pip", "install", "--offline", "--quiet", "--python", str(venv / "bin" / "python"), "-c", str(pins), str(wheel))
    return venv


def test_the_wheel_carries_its_stubs_and_type_information(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "aitask_client/py.typed" in names
    assert "aitask_client/_proto/task_service_pb2.py" in names and "aitask_client/_proto/task_service_pb2.pyi" in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "aitask = aitask_client.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_client_works_without_the_rest_of_the_project(
    stack: LocalStack, fresh_venv: Path, api_key: str, tmp_path: Path
) -> None:
    python = str(fresh_venv / "bin" / "python")
    # Nothing of the gateway itself came along: only the client and its few dependencies.
    alone = subprocess.run([python, "-c", "import aitask"], capture_output=True, text=True, cwd=tmp_path)
    assert alone.returncode != 0 and "No module named 'aitask'" in alone.stderr

    env = {"PATH": os.environ["PATH"], "AITASK_URL": gateway_url(stack), "AITASK_API_KEY": api_key, "NO_PROXY": "*"}
    script = f"""
import hashlib, json
from aitask_client import Client
with Client() as client:
    task = client.run({SEEDREAM["model"]!r}, "a fox from a fresh venv", size="1024x1024")
    path = client.download(task, "fox.png")
    print(json.dumps({{"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "output": task.output.sha256}}))
"""
    ran = subprocess.run([python, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    digests = json.loads(ran.stdout)
    assert digests["sha256"] == digests["output"]

    listed = subprocess.run([str(fresh_venv / "bin" / "aitask"), "ls", "--json"], env=env, capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [task["prompt"] for task in json.loads(listed.stdout)["tasks"]] == ["a fox from a fresh venv"]
