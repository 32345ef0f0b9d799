"""gRPC server bootstrap shared by every service: health, reflection, interceptors, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aitask_common.logging import get_logger
from aitask_common.metrics import MetricsInterceptor

log = get_logger(__name__)

# Empty service name = the server as a whole: readiness (what readiness probes, Compose and Envoy ask about).
OVERALL = ""
# Liveness: SERVING from start() until the process stops, whatever its dependencies do. Kubernetes' liveness and
# startup probes ask for it (`grpc.service`), so an outage of MongoDB or Redis takes pods out of rotation but
# never restarts them.
LIVENESS = "liveness"
# How long a server behind a health-checking balancer (the task service behind Envoy) goes on serving after
# it reports NOT_SERVING on SIGTERM, so the balancer stops sending it requests before it stops listening:
# more than Envoy's health-check interval plus its timeout (gateway/config.py), as a test checks.
BALANCED_DRAIN_SECONDS = 2.5


class GrpcServer:
    """A grpc.aio server with health and reflection wired in, bound to one address.

    Health has two answers: LIVENESS (the process runs) and readiness (OVERALL and each service name), which
    follows `start_up` (run until it succeeds once: indexes, caches) and then `dependency_check`, both retried
    every `check_interval`: a dependency down at start-up is waited for, not fatal.

    Every RPC goes through the metrics interceptor first, then through `interceptors` in their order:
    metrics is outermost, so it also counts the calls an inner interceptor rejects (UNAUTHENTICATED, ...).
    """

    def __init__(
        self,
        address: str,
        service_names: Iterable[str],
        dependency_check: Callable[[], Awaitable[object]] | None = None,
        check_interval: float = 2.0,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        drain_seconds: float = 0.0,
        start_up: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        # so_reuseport off: two instances must not silently share one port.
        self.server = grpc.aio.server(
            interceptors=[MetricsInterceptor(), *interceptors], options=[("grpc.so_reuseport", 0)]
        )
        self.dependency_check = dependency_check
        # Public: a provider sets it after construction (its registration needs the bound port).
        self.start_up = start_up
        self._started_up = False
        self.check_interval = check_interval
        self.drain_seconds = drain_seconds
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = [*service_names, health.SERVICE_NAME]
        reflection.enable_server_reflection([*self.service_names, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC server to {address}")

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server and each of its services."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in [OVERALL, *self.service_names]:
            await self.health.set(name, status)

    async def start(self) -> None:
        """Start accepting RPCs, report live, and ready once start-up and the dependencies are fine (one
        attempt here; the watcher retries)."""
        await self.server.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        if self.dependency_check is None and self.start_up is None:
            await self.set_serving(True)
        else:
            serving = await self._ready()
            await self.set_serving(serving)
            self._watcher = asyncio.create_task(self._watch_dependencies(serving))
        log.info("serving", port=self.port)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, go on serving for `drain_seconds` (while a balancer notices), then stop
        listening and let in-flight RPCs finish for up to `grace` seconds."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        await self.set_serving(False)
        if self.drain_seconds:
            log.info("draining: reporting NOT_SERVING before closing", drain_seconds=self.drain_seconds)
            await asyncio.sleep(self.drain_seconds)
        await self.server.stop(grace)

    async def _ready(self, was_serving: bool = True) -> bool:
        """One readiness attempt: start-up (until it once succeeded), then the dependency check."""
        try:
            if self.start_up is not None and not self._started_up:
                await self.start_up()
                self._started_up = True
            if self.dependency_check is not None:
                await asyncio.wait_for(self.dependency_check(), timeout=self.check_interval)
            return True
        except Exception as error:  # noqa: BLE001 - any failure means "not ready"
            if was_serving:
                log.warning("dependency unreachable; reporting NOT_SERVING", error=str(error) or type(error).__name__)
            return False

    async def _watch_dependencies(self, serving: bool) -> None:
        """NOT_SERVING while start-up has not succeeded or a dependency (MongoDB, Redis) is unreachable, SERVING
        again when it returns."""
        while not self._stopping:
            await asyncio.sleep(self.check_interval)
            healthy = await self._ready(serving)
            if healthy != serving and not self._stopping:
                serving = healthy
                await self.set_serving(healthy)
                if healthy:
                    log.info("dependencies reachable again; reporting SERVING")


async def run_until_signalled(
    server: GrpcServer,
    grace: float,
    start: Callable[[], Awaitable[None]],
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run `start`, wait for SIGTERM/SIGINT, then stop the server; a second signal cuts the grace short.

    The handlers are installed before `start`: a signal that lands once the server reports healthy but
    before this waits must drain it, not kill it.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("shutdown requested", grace_seconds=grace)
            stop_requested.set()
        else:
            log.warning("second signal: stopping now")
            asyncio.ensure_future(server.server.stop(0))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await start()
    await stop_requested.wait()
    if on_stop is not None:
        await on_stop()
    await server.stop(grace)
    log.info("stopped")
