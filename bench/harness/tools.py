"""Where the load tools are: wrk (Debian package), ghz (`make tools-ghz`), py-spy (bench dependency group)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from devstack.processes import LOCAL

GHZ = LOCAL / "bin" / "ghz"


def venv_tool(name: str) -> str:
    """A console script installed in this Python environment."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed in {path.parent}: run `uv sync --group bench`")
    return str(path)


def require_load_tools() -> tuple[str, str]:
    """(wrk, ghz) paths, or exit saying how to install what is missing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if not GHZ.exists():
        raise SystemExit(f"ghz is not installed at {GHZ}: run `make tools-ghz`")
    return wrk, str(GHZ)
