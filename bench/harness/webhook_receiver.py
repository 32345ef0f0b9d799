"""A webhook receiver for the `webhooks` bench scenario: aiohttp on loopback, in a process of its own, noting when
each task's final message first arrives (a retry of the same `webhook-id` is counted once).

A customer's receiver runs on the customer's machines. Here it shares the two cores, but not the harness's
interpreter: as a thread of the harness it held the GIL the load generator needs to create tasks and notice their
completion, which slowed the run with webhooks for a reason no deployment has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

from aiohttp import web

from devstack.processes import accepts, free_port

# How long the receiver's process may take to hand its arrivals back once told to stop.
STOP_SECONDS = 15.0


def serve(port: int, arrived: Synchronized[int], requests: Synchronized[int], stop: Event, results: object) -> None:
    """The receiver's process: answer 204 to every POST until `stop`, then put the first arrival (wall clock,
    UTC) of each task's final message on `results`."""
    arrivals: dict[str, datetime] = {}

    async def receive(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        requests.value += 1  # only this process writes it
        if message["type"] not in ("task.started", "task.progress") and message["data"]["task_id"] not in arrivals:
            arrivals[message["data"]["task_id"]] = datetime.now(UTC)
            arrived.value += 1
        return web.Response(status=204)

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        # Deliveries still arriving (the wait ran out) are cut off; the numbers gathered so far stand.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.cleanup(), timeout=10)

    asyncio.run(run())
    results.put(arrivals)  # type: ignore[attr-defined]


class BenchReceiver:
    """Answers 204 to every POST; `arrivals` holds each task's first final message once `stop` returned."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, datetime] = {}
        context = multiprocessing.get_context("spawn")
        self._arrived = context.Value("i", 0, lock=False)
        self._requests = context.Value("i", 0, lock=False)
        self._stop = context.Event()
        self._results = context.Queue()
        self._process = context.Process(
            target=serve,
            args=(self.port, self._arrived, self._requests, self._stop, self._results),
            name="bench-receiver",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def requests(self) -> int:
        return int(self._requests.value)

    def start(self) -> BenchReceiver:
        self._process.start()
        deadline = time.monotonic() + 30
        while not accepts(self.port):
            if time.monotonic() > deadline or not self._process.is_alive():
                raise RuntimeError("the bench's webhook receiver did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop the receiver and collect its arrivals (once; later calls do nothing)."""
        if not self._process.is_alive() and self._process.exitcode is not None:
            return
        self._stop.set()
        self.arrivals = self._results.get(timeout=STOP_SECONDS)
        self._process.join(timeout=STOP_SECONDS)

    def wait_for(self, expected: int, timeout: float) -> int:
        """Wait until `expected` tasks' final messages arrived, or the timeout; how many did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._arrived.value < expected:
            time.sleep(0.2)
        return int(self._arrived.value)
