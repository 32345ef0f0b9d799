"""Render Envoy's config for a local stack, then become Envoy (so signals reach it directly).

python -m devstack.envoy CONFIG_PATH LISTEN_PORT ADMIN_PORT OPENAI_DOOR_PORT TASK_SERVICE_PORT:OUTPUT_HTTP_PORT...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from devstack.processes import ENVOY
from gateway.config import render


def main() -> None:
    """Write the config and exec envoy on it."""
    config_path, listen_port, admin_port, openai_door_port, *task_services = sys.argv[1:]
    grpc_ports, output_ports = zip(*(service.split(":") for service in task_services), strict=True)
    # The services' trace collector, Envoy's too.
    collector = urlsplit(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    config = render(
        listen_port=int(listen_port),
        admin_port=int(admin_port),
        openai_door_port=int(openai_door_port),
        task_service_ports=[int(port) for port in grpc_ports],
        output_ports=[int(port) for port in output_ports],
        otlp_host=collector.hostname or "",
        otlp_port=collector.port or 4317,
    )
    Path(config_path).write_text(json.dumps(config, indent=2))
    os.execv(str(ENVOY), [str(ENVOY), "-c", config_path, "--log-level", "warn", "--disable-hot-restart"])


if __name__ == "__main__":
    main()
