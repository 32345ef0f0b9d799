"""Container health check (Compose `healthcheck:`): exit 0 when the process answers healthy.

    python /app/healthcheck.py grpc 127.0.0.1:50051     grpc.health.v1 Check("") is SERVING
    python /app/healthcheck.py http URL                 GET URL answers 2xx

The images have no curl or grpc_health_probe; the service's own Python does the asking.
Kubernetes uses native `grpc:` / `httpGet:` probes instead.
"""

from __future__ import annotations

import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def grpc_serving(address: str) -> bool:
    """Whether the server at `address` reports the overall health status SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name}", file=sys.stderr)
            return False
    print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}")
    return response.status == health_pb2.HealthCheckResponse.SERVING


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


def main(argv: list[str]) -> int:
    """Run one check; exit status 0 = healthy, 1 = not, 2 = usage."""
    checks = {"grpc": grpc_serving, "http": http_ok}
    if len(argv) != 2 or argv[0] not in checks:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if checks[argv[0]](argv[1]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
