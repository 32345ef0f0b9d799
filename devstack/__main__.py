"""`python -m devstack`: run the whole stack in the foreground under honcho (what `make run` does)."""

from __future__ import annotations

import os
import shlex
import sys

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


def main() -> None:
    """Start every process with prefixed output; Ctrl-C stops them all."""
    ports = Ports()
    data_dir = LOCAL / "data"
    env = base_environment() | service_environment(ports, ROOT / "logs", dict(os.environ))
    simulated = uses_simulator(dict(os.environ))
    manager = Manager()
    for process in [*infrastructure(ports, data_dir), *services(ports)]:
        if process.name == "simulator" and not simulated:
            continue
        manager.add_process(process.name, shlex.join(process.argv), env=env | process.env)
    upstream = "the local upstream simulator (no API keys set)" if simulated else "the real vendor APIs"
    print(
        f"aitask: REST and gRPC on http://127.0.0.1:{ports.envoy} (Envoy admin :{ports.envoy_admin}), "
        f"task service gRPC :{ports.task_service}, upstream: {upstream}.\n"
        f"  try: curl -s http://127.0.0.1:{ports.envoy}/api/v1/ai/tasks?user_id=user-1\n",
        flush=True,
    )
    if env.get("ENVIRONMENT", "development") == "development":
        print("aitask: ENVIRONMENT=development: running without authentication; do not expose this.", flush=True)
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
