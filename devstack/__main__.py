"""`python -m devstack [--reload]`: run the whole stack in the foreground under honcho.

`make run` runs it as is; `make dev` adds --reload, which restarts each Python
service when a source file it may import changes (watchfiles).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from honcho.manager import Manager

from aitask_common.settings import LOCAL_STACK_ENV
from devstack.processes import (
    LOCAL,
    ROOT,
    Ports,
    base_environment,
    dotenv,
    infrastructure,
    service_environment,
    services,
    uses_simulator,
)

# Source folders a change in which restarts the Python services under --reload.
WATCHED = [
    "aitask_common",
    "task_service",
    "dispatcher_service",
    "provider_volcengine",
    "provider_openai",
    "openai_door",
    "upstream_simulator",
    "aitask",
]


def with_reload(argv: list[str]) -> list[str]:
    """argv run under watchfiles, restarted on any change in the watched folders (caches ignored)."""
    watchfiles = str(Path(sys.executable).with_name("watchfiles"))
    return [watchfiles, "--filter", "default", shlex.join(argv), *(str(ROOT / folder) for folder in WATCHED)]


def write_stack_env(path: Path, ports: Ports, env: dict[str, str]) -> None:
    """Where this stack listens, as a dotenv file: the operator tools read it when REDIS_URL / MONGO_URL are unset."""
    values = {
        "REDIS_URL": env["REDIS_URL"],
        "MONGO_URL": env["MONGO_URL"],
        "AITASK_REST_URL": f"http://127.0.0.1:{ports.envoy}",
        "AITASK_GRPC_ADDRESS": f"127.0.0.1:{ports.envoy}",
        "ENVOY_ADMIN_URL": f"http://127.0.0.1:{ports.envoy_admin}",
    }
    lines = [
        "# Written by `make run` (python -m devstack) at every start: where the local stack listens.",
        "# make redis-queue-*, make api-key and their CLIs read it for what the environment leaves unset.",
        *(f"{name}={value}" for name, value in values.items()),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def dotenv_report(from_file: dict[str, str], stack_env: dict[str, str], environment: dict[str, str]) -> str:
    """What a `.env` changes in this stack: the values it sets, and those the environment or the stack sets instead."""
    if not from_file:
        return ""
    used = sorted(name for name in from_file if name not in environment and name not in stack_env)
    by_environment = sorted(name for name in from_file if name in environment)
    by_stack = sorted(name for name in from_file if name in stack_env and name not in environment)
    lines = [f"aitask: .env found; it overrides the defaults of: {', '.join(used) or 'nothing'}"]
    if by_environment:
        lines.append(f"  ignored, set in the environment instead: {', '.join(by_environment)}")
    if by_stack:
        lines.append(f"  ignored, make run sets them for its own stack: {', '.join(by_stack)}")
    return "\n".join(lines)


def main() -> None:
    """Start every process with prefixed output; Ctrl-C stops them all."""
    reload = "--reload" in sys.argv[1:]
    ports = Ports()
    data_dir = LOCAL / "data"
    # `.env` counts as the services see it: a vendor key there means the real vendor, not the simulator.
    configured = dotenv(ROOT / ".env") | dict(os.environ)
    env = base_environment() | service_environment(ports, ROOT / "logs", configured)
    simulated = uses_simulator(configured)
    manager = Manager()
    for process in infrastructure(ports, data_dir):
        manager.add_process(process.name, shlex.join(process.argv), env=env | process.env)
    for process in services(ports):
        if process.name == "simulator" and not simulated:
            continue
        argv = with_reload(process.argv) if reload else process.argv
        manager.add_process(process.name, shlex.join(argv), env=env | process.env)
    write_stack_env(ROOT / LOCAL_STACK_ENV, ports, env)
    upstream = "the local upstream simulator (no API keys set)" if simulated else "the real vendor APIs"
    print(
        f"aitask: REST and gRPC on http://127.0.0.1:{ports.envoy} (Envoy admin :{ports.envoy_admin}), "
        f"task service gRPC :{ports.task_service} and :{ports.task_service_2}, upstream: {upstream}.\n"
        f"  try: curl -s http://127.0.0.1:{ports.envoy}/api/v1/ai/tasks?user_id=user-1\n"
        f"  OpenAI SDKs: base URL http://127.0.0.1:{ports.envoy}/v1 (README: Use it with the OpenAI SDK)\n"
        f"  its URLs are in {LOCAL_STACK_ENV}, where make api-key and make redis-queue-status find them\n",
        flush=True,
    )
    if report := dotenv_report(dotenv(ROOT / ".env"), env, dict(os.environ)):
        print(report, flush=True)
    environment = configured.get("ENVIRONMENT", "development")
    if environment == "development":
        print("aitask: ENVIRONMENT=development: running without authentication; do not expose this.", flush=True)
    else:
        print(
            f"aitask: ENVIRONMENT={environment}: every request needs an API key ('Authorization: Bearer <key>'); "
            'make one with\n  make api-key ARGS="create --user-id user-1 --role admin"\n',
            flush=True,
        )
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
