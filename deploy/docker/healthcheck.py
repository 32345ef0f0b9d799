"""Container health check (Compose `healthcheck:`): exit 0 when the process answers healthy.

    python /app/healthcheck.py grpc 127.0.0.1:50051     grpc.health.v1 Check("") is SERVING (readiness)
    python /app/healthcheck.py grpc 127.0.0.1:50051 liveness   Check("liveness"): the process works
    python /app/healthcheck.py http URL                 GET URL answers 2xx
    python /app/healthcheck.py workers DIR              no live dispatcher worker is past its deadline

The images have no curl or grpc_health_probe; the service's own Python does the asking.
Kubernetes uses native `grpc:` / `httpGet:` probes instead, and `workers` as the dispatcher's liveness
(an exec probe: Python with no gRPC import, a few tens of milliseconds).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

TIMEOUT_SECONDS = 3.0


def grpc_serving(address: str, service: str = "") -> bool:
    """Whether the server at `address` reports SERVING for `service` (default: overall readiness)."""
    import grpc  # here, not at the top: the `workers` probe runs often and needs none of it
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name}", file=sys.stderr)
            return False
    print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}")
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    """Whether GET `url` answers with a 2xx status (proxies bypassed)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            print(f"{url}: {response.status}")
            return 200 <= response.status < 300
    except OSError as error:
        print(f"{url}: {error}", file=sys.stderr)
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def workers_on_time(directory: str) -> bool:
    """Whether every live worker's deadline (dispatcher_service/liveness.py: a file per pid holding Unix
    seconds) is still ahead; files of exited workers are ignored, an empty or missing folder is fine."""
    folder = Path(directory)
    overdue = []
    for path in folder.iterdir() if folder.is_dir() else []:
        if not path.name.isdigit() or not _alive(int(path.name)):
            continue
        try:
            late = time.time() - float(path.read_text())
        except (OSError, ValueError):
            continue  # replaced or removed while reading
        if late > 0:
            overdue.append(f"worker pid {path.name}: {late:.0f} s past its deadline")
    for line in overdue:
        print(line, file=sys.stderr)
    return not overdue


def main(argv: list[str]) -> int:
    """Run one check; exit status 0 = healthy, 1 = not, 2 = usage."""
    if len(argv) == 3 and argv[0] == "grpc":
        return 0 if grpc_serving(argv[1], argv[2]) else 1
    checks: dict[str, Callable[[str], bool]] = {"grpc": grpc_serving, "http": http_ok, "workers": workers_on_time}
    if len(argv) != 2 or argv[0] not in checks:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if checks[argv[0]](argv[1]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
