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

from devstack.processes import (
    LOCAL,
    ROOT,
    Ports,
    base_environment,
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
    "upstream_simulator",
    "aitask",
]


def with_reload(argv: list[str]) -> list[str]:
    """argv run under watchfiles, restarted on any change in the watched folders (caches ignored)."""
    watchfiles = str(Path(sys.executable).with_name("watchfiles"))
    return [watchfiles, "--filter", "default", shlex.join(argv), *(str(ROOT / folder) for folder in WATCHED)]


def main() -> None:
    """Start every process with prefixed output; Ctrl-C stops them all."""
    reload = "--reload" in sys.argv[1:]
    ports = Ports()
    data_dir = LOCAL / "data"
    env = base_environment() | service_environment(ports, ROOT / "logs", dict(os.environ))
    simulated = uses_simulator(dict(os.environ))
    manager = Manager()
    for process in infrastructure(ports, data_dir):
        manager.add_process(process.name, shlex.join(process.argv), env=env | process.env)
    for process in services(ports):
        if process.name == "simulator" and not simulated:
            continue
        argv = with_reload(process.argv) if reload else process.argv
        manager.add_process(process.name, shlex.join(argv), env=env | process.env)
    upstream = "the local upstream simulator (no API keys set)" if simulated else "the real vendor APIs"
    print(
        f"aitask: REST and gRPC on http://127.0.0.1:{ports.envoy} (Envoy admin :{ports.envoy_admin}), "
        f"task service gRPC :{ports.task_service} and :{ports.task_service_2}, upstream: {upstream}.\n"
        f"  try: curl -s http://127.0.0.1:{ports.envoy}/api/v1/ai/tasks?user_id=user-1\n",
        flush=True,
    )
    environment = env.get("ENVIRONMENT", "development")
    if environment == "development":
        print("aitask: ENVIRONMENT=development: running without authentication; do not expose this.", flush=True)
    else:
        print(
            f"aitask: ENVIRONMENT={environment}: every request needs an API key ('Authorization: Bearer <key>'); "
            f"make one with\n  MONGO_URL=mongodb://127.0.0.1:{ports.ferretdb}/ "
            f"{sys.executable} -m task_service.api_keys create --user-id user-1 --role admin\n",
            flush=True,
        )
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
