"""A webhook receiver for the `webhooks` bench scenario: aiohttp on loopback, in a thread of the harness, noting
when each task's final message first arrives (a retry of the same `webhook-id` is counted once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from datetime import UTC, datetime

from aiohttp import web

from devstack.processes import free_port


class BenchReceiver:
    """Answers 204 to every POST and records the first arrival (wall clock, UTC) of each task's final message."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, datetime] = {}
        self.requests = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _receive(self, request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        arrived = datetime.now(UTC)
        with self._lock:
            self.requests += 1
            if message["type"] != "task.started" and message["type"] != "task.progress":
                self.arrivals.setdefault(message["data"]["task_id"], arrived)
        return web.Response(status=204)

    def start(self) -> BenchReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024).start())
        threading.Thread(target=self._loop.run_forever, name="bench-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the receiver; deliveries still arriving (the wait ran out) are cut off after 10 s, and the numbers
        gathered so far stand."""
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def wait_for(self, expected: int, timeout: float) -> int:
        """Wait until `expected` tasks' final messages arrived, or the timeout; how many did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.arrivals) >= expected:
                    break
            time.sleep(0.2)
        with self._lock:
            return len(self.arrivals)
