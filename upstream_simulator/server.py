"""App assembly: vendor routes, media, the ``/_sim`` admin API, and ways to run the server.

* ``build_app(settings)`` returns the aiohttp application.
* ``await start(settings)`` binds it (port 0 allowed) and returns ``(runner, port)``.
* ``SimulatorThread(settings)`` runs it on a background thread for synchronous tests.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
from types import TracebackType
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from upstream_simulator import media
from upstream_simulator.ark import ArkAPI
from upstream_simulator.context import ENDPOINT_KEY, INFLIGHT_KEY, TRANSPORT_KEY, SimContext
from upstream_simulator.faults import ENDPOINTS, FaultUpdate, Rejected
from upstream_simulator.openai_api import OpenAIAPI
from upstream_simulator.settings import SimulatorSettings
from upstream_simulator.visual import VisualAPI

log = logging.getLogger("upstream_simulator")

CONTEXT_KEY = web.AppKey("upstream_simulator.context", SimContext)
MAX_BODY_BYTES = 64 * 1024 * 1024  # video input references can be large


def context_of(app: web.Application) -> SimContext:
    """The ``SimContext`` of an app built by ``build_app``."""
    return app[CONTEXT_KEY]


def _outcome_middleware(ctx: SimContext) -> Any:
    """Answer ``Rejected`` with its response and record every counted request's final status."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            try:
                response: web.StreamResponse = await handler(request)
            except Rejected as exc:
                response = exc.response
            except web.HTTPException as exc:
                if ENDPOINT_KEY in request:
                    ctx.stats.finish(request[ENDPOINT_KEY], exc.status)
                    ctx.requests.finish(request, exc.status)
                raise
            except Exception:
                log.exception("simulator handler failed: %s %s", request.method, request.path_qs)
                if ENDPOINT_KEY in request:
                    ctx.stats.finish(request[ENDPOINT_KEY], 500)
                    ctx.requests.finish(request, 500)
                raise
            endpoint = request.get(ENDPOINT_KEY)
            if endpoint is not None:
                ctx.stats.finish(endpoint, response.status)
                ctx.requests.finish(request, response.status)
            cut = request.get(TRANSPORT_KEY)
            if cut in ("reset", "truncate") and isinstance(response, web.Response):
                return await _cut_short(request, response, reset=cut == "reset")
            return response
        finally:
            if INFLIGHT_KEY in request:
                ctx.limiter.release(request[INFLIGHT_KEY])

    return middleware


async def _cut_short(request: web.Request, response: web.Response, *, reset: bool) -> web.StreamResponse:
    """Send the status, the headers (announcing the whole body) and half the body, then drop the connection.

    ``reset``: abort with a TCP RST (SO_LINGER 0), as a crashed peer or middlebox does; otherwise close
    the connection cleanly, leaving the body short of its Content-Length.
    """
    body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    return stream


class _Admin:
    """The ``/_sim`` control API used by tests and operators."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_sim/health", self.health),
            web.get("/_sim/faults", self.get_faults),
            web.post("/_sim/faults", self.set_faults),
            web.delete("/_sim/faults", self.clear_faults),
            web.get("/_sim/stats", self.stats),
            web.get("/_sim/requests", self.requests),
            web.post("/_sim/reset", self.reset),
            web.get("/_sim/concurrency", self.concurrency),
            web.delete("/_sim/concurrency", self.reset_concurrency),
        ]

    async def health(self, request: web.Request) -> web.Response:
        """Liveness: endpoint names and job count."""
        return web.json_response({"ok": True, "endpoints": list(ENDPOINTS), "jobs": len(self.ctx.jobs)})

    async def get_faults(self, request: web.Request) -> web.Response:
        """Current fault configuration of every endpoint."""
        return web.json_response(self.ctx.faults.snapshot())

    async def set_faults(self, request: web.Request) -> web.Response:
        """Apply a partial fault config to one endpoint or ``*``; answers the new full configuration."""
        try:
            update = FaultUpdate.model_validate_json(await request.read())
            self.ctx.faults.update(update.endpoint, update)
        except (ValidationError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.ctx.faults.snapshot())

    async def clear_faults(self, request: web.Request) -> web.Response:
        """Reset every endpoint to "no faults"."""
        self.ctx.faults.clear()
        return web.json_response(self.ctx.faults.snapshot())

    async def stats(self, request: web.Request) -> web.Response:
        """Per-endpoint counters."""
        return web.json_response(self.ctx.stats.snapshot())

    async def requests(self, request: web.Request) -> web.Response:
        """The logged vendor requests whose body or query contains ``?contains=`` (upstream_simulator.request_log)."""
        contains = request.query.get("contains", "")
        if not contains:
            return web.json_response(
                {"error": "contains: is required (a marker the test put in its prompt)"}, status=400
            )
        return web.json_response(self.ctx.requests.find(contains))

    async def concurrency(self, request: web.Request) -> web.Response:
        """Per endpoint (over every API key): requests in flight and the most ever in flight at once since the
        last reset (counted from admission to answer, the injected latency included)."""
        return web.json_response(self.ctx.limiter.concurrency())

    async def reset_concurrency(self, request: web.Request) -> web.Response:
        """Measure peak concurrency afresh."""
        self.ctx.limiter.reset_peaks()
        return web.json_response(self.ctx.limiter.concurrency())

    async def reset(self, request: web.Request) -> web.Response:
        """Clear statistics and jobs (faults are kept)."""
        self.ctx.reset()
        return web.json_response({"ok": True})


def build_app(settings: SimulatorSettings | None = None) -> web.Application:
    """Build the simulator application (all vendors, media files, admin API)."""
    settings = settings or SimulatorSettings()
    ctx = SimContext(settings)
    app = web.Application(middlewares=[_outcome_middleware(ctx)], client_max_size=MAX_BODY_BYTES)
    app[CONTEXT_KEY] = ctx
    app.add_routes(_Admin(ctx).routes())

    async def serve_file(request: web.Request) -> web.Response:
        await ctx.enter(request, "media.files")
        ctx.inject("media.files", None, media.fault_response)
        return media.serve(request, ctx.signer)

    app.add_routes([web.get("/files/{name}", serve_file)])
    app.add_routes(ArkAPI(ctx).routes())
    app.add_routes(OpenAIAPI(ctx).routes())
    app.add_routes(VisualAPI(ctx).routes())
    return app


async def start(settings: SimulatorSettings | None = None) -> tuple[web.AppRunner, int]:
    """Start the simulator on the current event loop; return the runner and the bound port.

    Call ``await runner.cleanup()`` to stop it.
    """
    settings = settings or SimulatorSettings()
    app = build_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)  # tests stop it often
    await runner.setup()
    # A large backlog so bursts of hundreds of concurrent connections are not refused.
    site = web.TCPSite(runner, settings.host, settings.port, backlog=2048)
    await site.start()
    port = int(runner.addresses[0][1])
    context_of(app).public_base = settings.public_base(port)
    log.info("upstream simulator listening on %s:%d", settings.host, port)
    return runner, port


class SimulatorThread:
    """Run the simulator on a background thread's event loop (for synchronous tests).

    ``with SimulatorThread(settings) as sim: ... sim.url ...``
    """

    def __init__(self, settings: SimulatorSettings | None = None) -> None:
        self.settings = settings or SimulatorSettings(port=0)
        self.port: int | None = None
        self.app: web.Application | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:41234``."""
        if self.port is None:
            raise RuntimeError("simulator is not running")
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "", "::") else self.settings.host
        return f"http://{host}:{self.port}"

    @property
    def context(self) -> SimContext:
        """Direct access to the in-process state (faults, stats, jobs)."""
        if self.app is None:
            raise RuntimeError("simulator is not running")
        return context_of(self.app)

    def start(self) -> SimulatorThread:
        """Start the server thread and wait until it is listening."""
        self._thread = threading.Thread(target=self._run, name="upstream-simulator", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        if self.port is None:
            raise RuntimeError("simulator did not start within 30 s")
        return self

    def stop(self) -> None:
        """Stop the server and join the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = self._thread = None
        self.port = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner: web.AppRunner | None = None
        try:
            runner, self.port = loop.run_until_complete(start(self.settings))
            self.app = runner.app
        except BaseException as exc:  # reported to start() in the caller's thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
