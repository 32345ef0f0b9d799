"""`GET /api/v1/ai/task/{task_id}/output?expires=…&signature=…`: a task's stored image or video, by signed link;
and `GET /console/`: the operator's console, three static files (task_service/console/) that call the API.

An HTTP route beside the gRPC server, in the same process (Envoy routes the path here): bytes cannot go
through the JSON transcoder, and a `<video>` element needs Range requests answered. The link's signature is
the only credential (no API key), so an `<img>` or `<video>` tag and plain curl can use it. The body streams
from the store a chunk at a time (read in a worker thread): serving a large video never holds it whole.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Generator
from pathlib import Path
from typing import Final

from aiohttp import web
from botocore.exceptions import ClientError
from gridfs.errors import NoFile
from pymongo.errors import PyMongoError

from aitask_common.logging import get_logger
from aitask_common.outputs import OUTPUT_PATH, STORE_ERRORS, OutputLinks, OutputStore
from task_service.storage import TaskStore

log = get_logger(__name__)

ROUTE: Final = OUTPUT_PATH
CONSOLE_DIR: Final = Path(__file__).with_name("console")
# Every file the console has ("" is the page itself); anything else under /console/ is 404.
CONSOLE_FILES: Final = {"": "index.html", "console.js": "console.js", "console.css": "console.css"}
# The console runs only its own script and loads only from this origin (outputs may be the vendors' links).
CONSOLE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: http: https:; media-src 'self' http: https:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# `bytes=first-last`, `bytes=first-` or `bytes=-suffix`: one range (several are answered whole, as HTTP allows).
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Unsatisfiable(Exception):
    """A well-formed Range that no byte of the output satisfies (416)."""


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a Range header asks for; None to answer the whole output (no header, or one
    that is malformed, which HTTP says to ignore); Unsatisfiable for a range beyond the output."""
    match = _RANGE.match(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # malformed: ignored
    if start >= size:
        raise Unsatisfiable
    return start, end


def _error(status: int, code: str, message: str) -> web.Response:
    """The house error envelope."""
    body = json.dumps({"success": False, "message": message, "code": code})
    return web.Response(status=status, text=body, content_type="application/json")


class OutputServer:
    """The aiohttp server of the output route."""

    def __init__(self, tasks: TaskStore, outputs: OutputStore, links: OutputLinks) -> None:
        self.tasks = tasks
        self.outputs = outputs
        self.links = links
        app = web.Application()
        app.router.add_get(ROUTE, self.serve_output)  # HEAD too
        app.router.add_get("/console", self.console_home)
        app.router.add_get("/console/{name:.*}", self.serve_console)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (0: any free port, then in `self.port`)."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_port=False)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening; downloads in flight are cut."""
        await self.runner.cleanup()

    @staticmethod
    async def console_home(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    @staticmethod
    async def serve_console(request: web.Request) -> web.StreamResponse:
        """One of the console's files."""
        name = CONSOLE_FILES.get(request.match_info["name"])
        if name is None:
            return _error(404, "NOT_FOUND", f"no console file {request.match_info['name']!r}")
        return web.FileResponse(CONSOLE_DIR / name, headers=CONSOLE_HEADERS)

    async def serve_output(self, request: web.Request) -> web.StreamResponse:
        """The output, whole (200) or a range of it (206)."""
        task_id = request.match_info["task_id"]
        expires = request.query.get("expires", "")
        if not self.links.valid(task_id, expires, request.query.get("signature", "")):
            return _error(403, "PERMISSION_DENIED", "the output link is invalid or has expired")
        try:
            document = await self.tasks.get(task_id, None)  # a signed link names no user
        except PyMongoError as error:
            log.error("database unavailable", task_id=task_id, error=str(error))
            return _error(503, "UNAVAILABLE", "task database unavailable, retry later")
        output = document.get("output") if document else None
        if output is None:
            return _error(404, "NOT_FOUND", f"task {task_id!r} has no stored output")
        size = output["size"]
        headers = {
            "Content-Type": output["content_type"],
            "ETag": f'"{output["sha256"]}"',
            "Accept-Ranges": "bytes",
            # The bytes never change; the link stops working at `expires`.
            "Cache-Control": f"private, max-age={max(int(expires) - int(time.time()), 0)}, immutable",
        }
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        try:
            byte_range = requested_range(request.headers.get("Range"), size)
        except Unsatisfiable:
            refused = _error(416, "RANGE_NOT_SATISFIABLE", "the requested range is beyond the output")
            refused.headers["Content-Range"] = f"bytes */{size}"
            return refused
        status, (start, end) = (200, (0, size - 1)) if byte_range is None else (206, byte_range)
        if byte_range is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start + 1
        if request.method == "HEAD" or size == 0:
            await response.prepare(request)
            await response.write_eof()
            return response
        chunks = self.outputs.read(task_id, start, end)
        try:
            # The first read before any header goes out: a missing copy is still a clean 404.
            first = await asyncio.to_thread(next, chunks, b"")
        except (NoFile, ClientError) as error:
            log.error("stored output missing", task_id=task_id, error=str(error))
            return _error(404, "NOT_FOUND", f"task {task_id!r} has no stored output")
        except STORE_ERRORS as error:
            log.error("output store unavailable", task_id=task_id, error=str(error))
            return _error(503, "UNAVAILABLE", "output store unavailable, retry later")
        await response.prepare(request)
        try:
            await self._send(response, first, chunks)
        finally:
            await asyncio.to_thread(chunks.close)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, first: bytes, chunks: Generator[bytes]) -> None:
        data = first
        while data:
            await response.write(data)
            data = await asyncio.to_thread(next, chunks, b"")
        await response.write_eof()
