"""Liveness and readiness are two health answers: an outage makes a server unready, never dead.

Kubernetes restarts a container whose liveness probe fails; these tests pin that the LIVENESS service name
stays SERVING through a dependency outage, at start-up and later, while readiness follows the dependency.
The dependency is a real TCP port: closed, then listening.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitask_common.grpc_server import LIVENESS, OVERALL, GrpcServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INTERVAL = 0.1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _status(channel: grpc.aio.Channel, service: str) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(answer.status)


async def _until(channel: grpc.aio.Channel, service: str, wanted: int) -> None:
    for _ in range(100):
        if await _status(channel, service) == wanted:
            return
        await asyncio.sleep(INTERVAL / 2)
    raise AssertionError(f"{service!r} never became {wanted}")


def test_a_dependency_down_at_start_up_is_waited_for_live_and_unready() -> None:
    port = _closed_port()
    attempts = 0

    async def dependency() -> None:
        nonlocal attempts
        attempts += 1
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    async def main() -> None:
        server = GrpcServer("127.0.0.1:0", ["test.Service"], start_up=dependency, check_interval=INTERVAL)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                assert await _status(channel, LIVENESS) == SERVING
                for name in (OVERALL, "test.Service"):
                    assert await _status(channel, name) == NOT_SERVING
                # Still waiting, still live, well past a few attempts: no give-up.
                await asyncio.sleep(INTERVAL * 5)
                assert attempts >= 3
                assert await _status(channel, LIVENESS) == SERVING
                listener = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", port)
                try:
                    await _until(channel, OVERALL, SERVING)
                    assert await _status(channel, "test.Service") == SERVING
                finally:
                    listener.close()
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_an_outage_later_turns_readiness_not_liveness() -> None:
    async def main() -> None:
        listener = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]

        async def dependency() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()

        server = GrpcServer("127.0.0.1:0", [], dependency, check_interval=INTERVAL)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                assert await _status(channel, OVERALL) == SERVING, "ready at once when the dependency answers"
                listener.close()
                await listener.wait_closed()
                await _until(channel, OVERALL, NOT_SERVING)
                assert await _status(channel, LIVENESS) == SERVING
        finally:
            await server.stop(0)

    asyncio.run(main())
