"""Shutdown of the shared gRPC server (README, Operations: Shutdown), in a subprocess signalled as Kubernetes does.

SIGTERM turns health NOT_SERVING, an in-flight RPC finishes within SHUTDOWN_GRACE, an RPC still running
when the grace is over is cut, and a second signal stops the server at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.processes import ROOT

# A GrpcServer with one slow unary method (`/test.Slow/Sleep`: sleeps the seconds the request names),
# stopped by run_until_signalled. It goes on serving for DRAIN seconds after the first signal (as the task
# service does behind Envoy), so its health can be read while it stops.
SERVER = """
import asyncio, sys
import grpc
from aitask_common.grpc_server import GrpcServer, run_until_signalled

GRACE, DRAIN = float(sys.argv[1]), float(sys.argv[2])


async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return b"slept"


async def main() -> None:
    server = GrpcServer("127.0.0.1:0", ["test.Slow"], drain_seconds=DRAIN)
    handler = grpc.unary_unary_rpc_method_handler(sleep)
    server.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Slow", {"Sleep": handler})])

    async def start() -> None:
        await server.start()
        print(f"PORT {server.port}", flush=True)

    await run_until_signalled(server, GRACE, start)


asyncio.run(main())
"""


@dataclass
class Call:
    """A slow RPC run in a thread: what it returned or raised, and when it ended."""

    result: bytes | None = None
    error: grpc.RpcError | None = None
    ended: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


@contextmanager
def server(grace: float, drain: float) -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(grace), str(drain)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        # The server logs to stdout too: its port is on the line that starts with PORT.
        line = ""
        while not line.startswith("PORT "):
            line = process.stdout.readline()
            assert line, "the server exited before it printed its port"
        port = int(line.split()[1])
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def slow_call(port: int, seconds: float) -> Call:
    """Start `Sleep(seconds)` in a thread and return once the server holds it (it is in flight)."""
    call = Call()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    sleep = channel.unary_unary("/test.Slow/Sleep")

    def run() -> None:
        try:
            call.result = sleep(str(seconds).encode(), timeout=120)
        except grpc.RpcError as error:
            call.error = error
        finally:
            call.ended = time.monotonic()
            channel.close()
            call.done.set()

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.5)  # the call reaches the server (a loopback round trip) long before this
    assert not call.done.is_set(), "the slow call ended before the server was signalled"
    return call


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(answer.status)


def test_sigterm_reports_not_serving_and_lets_an_in_flight_rpc_finish() -> None:
    with server(grace=10, drain=1.5) as (process, port):
        assert health(port) == health_pb2.HealthCheckResponse.SERVING
        call = slow_call(port, 3.0)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(30) == 0
        exited = time.monotonic()
        assert call.done.wait(10)
    assert call.error is None and call.result == b"slept"
    # The process waited for the call (it had ~2.5 s left when signalled), well within the 10 s grace.
    assert call.ended - signalled > 2.0
    assert exited - signalled < 8.0


def test_an_rpc_still_running_when_the_grace_is_over_is_cut() -> None:
    with server(grace=1, drain=0) as (process, port):
        call = slow_call(port, 30.0)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        exited = time.monotonic()
        assert call.done.wait(10)
    assert call.error is not None and call.result is None
    # Stopped after the 1 s grace, not after the 30 s call.
    assert 0.8 < exited - signalled < 10.0


def test_a_second_signal_stops_the_server_at_once() -> None:
    with server(grace=60, drain=0) as (process, port):
        call = slow_call(port, 45.0)
        process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert process.poll() is None, "the first signal must wait for the in-flight call (grace 60 s)"
        second = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        exited = time.monotonic()
        assert call.done.wait(10)
    assert call.error is not None and call.result is None
    assert exited - second < 5.0
