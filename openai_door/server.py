"""The door's HTTP server (aiohttp): OpenAI's paths under /v1/, each a task in the task service.

    POST /v1/images/generations     an image task, answered once it is done (or a timeout error naming it)
    POST /v1/chat/completions       a text task, as a `chat.completion` or (stream=true) SSE chunks
    GET  /v1/models                 the live catalogue
    POST /v1/videos                 a video task, answered at once as a `video` object
    GET  /v1/videos, /v1/videos/{id}, /v1/videos/{id}/content;  DELETE /v1/videos/{id}

Callers' API keys go to the task service untouched (`authorization` metadata), which decides who may do what.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from aitask.v1 import task_service_pb2 as pb
from aitask_common.logging import configure_logging, get_logger
from aitask_common.metrics import serve_metrics
from aitask_common.redis_clients import async_redis_client
from aitask_common.settings import Environment, load_settings
from aitask_common.tasks import TaskStatus, TaskType
from aitask_common.tracing import configure_tracing
from openai_door.content import open_video
from openai_door.errors import OpenAIError, bad_request
from openai_door.retry_keys import RetryKeys
from openai_door.settings import OpenAIDoorSettings
from openai_door.shapes import (
    aspect_ratio_of,
    chat_chunks,
    chat_completion,
    failed_task_error,
    image_response,
    prompt_from_messages,
    video_object,
)
from openai_door.tasks import CALL_SECONDS, Caller, TaskClient, call, still_running

log = get_logger(__name__)

# Headers a caller may send that the task service reads (`Prefer` is not one: the door decides how long to wait).
PRIORITY_HEADER = "x-aitask-priority"
TASK_ID_HEADER = "x-aitask-task-id"
# A streamed chat waits in steps this long, sending an SSE comment after each, so no proxy drops a quiet stream.
STREAM_KEEPALIVE_SECONDS = 15
# How often `videos.create_and_poll` asks again (its `openai-poll-after-ms` header).
VIDEO_POLL_AFTER_MS = 500
VIDEO_LIST_MAX = 100
# How deep `GET /v1/videos?after=` looks for its cursor.
VIDEO_CURSOR_SCAN = 1000

SETTINGS = web.AppKey("settings", OpenAIDoorSettings)
TASKS = web.AppKey("tasks", TaskClient)
RETRY_KEYS = web.AppKey("retry_keys", RetryKeys)
HTTP = web.AppKey("http", aiohttp.ClientSession)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in OpenAI's shape, whoever raised it."""
    try:
        return await handler(request)
    except OpenAIError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = "not_found" if error.status == 404 else None
        return OpenAIError(error.status, f"{request.method} {request.path}: {error.reason}", code=code).response()


def caller_of(request: web.Request, idempotency_key: str | None = None) -> Caller:
    """The caller's key and user, as the task service expects them."""
    metadata = [(name, request.headers[name]) for name in ("authorization", "x-request-id") if name in request.headers]
    if idempotency_key:
        metadata.append(("idempotency-key", idempotency_key))
    return Caller(tuple(metadata), "")


async def creating_caller(request: web.Request, body: bytes, user: Any) -> Caller:
    """The caller of a create: with an idempotency key (the caller's, or one that holds across the SDK's retries)
    and the user it acts for (OpenAI's `user`, else the key's own; with authentication off, the door's)."""
    settings = request.app[SETTINGS]
    key = request.headers.get("idempotency-key") or await request.app[RETRY_KEYS].key_for(
        request.headers.get("authorization", ""), request.path, body, request.headers.get("x-stainless-retry-count")
    )
    if user is not None and not isinstance(user, str):
        raise bad_request("user: must be a string", "user")
    user_id = user or ""
    if not user_id and settings.environment is Environment.DEVELOPMENT:
        user_id = settings.openai_compat_development_user_id
    caller = caller_of(request, key)
    return Caller(caller.metadata, user_id)


async def json_body(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object."""
    raw = await request.read()
    try:
        body = json.loads(raw or b"{}")
    except ValueError as error:
        raise bad_request(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return raw, body


def _task_headers(task_id: str) -> dict[str, str]:
    return {TASK_ID_HEADER: task_id}


def _only_one(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise bad_request("n: only 1 is supported", "n")


def _priority(request: web.Request) -> str:
    return request.headers.get(PRIORITY_HEADER, "")


# --- images and chat ------------------------------------------------------------------------------------------
async def create_image(request: web.Request) -> web.Response:
    """POST /v1/images/generations."""
    raw, body = await json_body(request)
    caller = await creating_caller(request, raw, body.get("user"))
    tasks = request.app[TASKS]
    entry = await tasks.find_model(caller, str(body.get("model") or ""), TaskType.IMAGE.value)
    _only_one(body)
    size = str(body.get("size") or "")
    create = pb.CreateImageTaskRequest(
        prompt=str(body.get("prompt") or ""),
        user_id=caller.user_id,
        provider=entry.provider,
        model=entry.model,
        size="" if size == "auto" else size,
        response_format=str(body.get("response_format") or ""),
        priority=_priority(request),
    )
    task = await tasks.run(tasks.stub.CreateImageTask, create, caller, request.app[SETTINGS].openai_compat_wait_seconds)
    if task.status != TaskStatus.COMPLETED:
        raise failed_task_error(task)
    return web.json_response(image_response(task), headers=_task_headers(task.task_id))


def _text_request(body: dict[str, Any], caller: Caller, entry: pb.CatalogueModel, priority: str) -> Any:
    _only_one(body)
    create = pb.CreateTextTaskRequest(
        prompt=prompt_from_messages(body.get("messages")),
        user_id=caller.user_id,
        provider=entry.provider,
        model=entry.model,
        priority=priority,
    )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise bad_request("max_tokens: must be an integer", "max_tokens")
        create.max_tokens = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise bad_request("temperature: must be a number", "temperature")
        create.temperature = float(temperature)
    return create


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, plain or streamed."""
    raw, body = await json_body(request)
    caller = await creating_caller(request, raw, body.get("user"))
    tasks = request.app[TASKS]
    model = str(body.get("model") or "")
    entry = await tasks.find_model(caller, model, TaskType.TEXT.value)
    create = _text_request(body, caller, entry, _priority(request))
    wait_seconds = request.app[SETTINGS].openai_compat_wait_seconds
    if not body.get("stream"):
        task = await tasks.run(tasks.stub.CreateTextTask, create, caller, wait_seconds)
        if task.status != TaskStatus.COMPLETED:
            raise failed_task_error(task)
        return web.json_response(chat_completion(task, model), headers=_task_headers(task.task_id))
    # Streamed: a bad request is still an HTTP error (the create answers before the stream starts).
    created = await call(tasks.stub.CreateTextTask, create, caller, CALL_SECONDS)
    task_id = created.data.task_id
    stream = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"} | _task_headers(task_id)
    )
    await stream.prepare(request)
    deadline = time.monotonic() + wait_seconds
    try:
        task = await tasks.get(task_id, caller)
        while not TaskStatus(task.status).is_final:
            left = int(deadline - time.monotonic())
            if left <= 0:
                raise still_running(task_id, wait_seconds)
            await stream.write(b": waiting for the task\n\n")
            task = await tasks.get(task_id, caller, min(STREAM_KEEPALIVE_SECONDS, left))
        if task.status != TaskStatus.COMPLETED:
            raise failed_task_error(task)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in chat_chunks(task, model, include_usage):
            await stream.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    except OpenAIError as error:
        # The stream has begun (a 200): the SDKs raise an APIError for an `error` event.
        await stream.write(b"data: " + json.dumps(error.body()).encode() + b"\n\n")
    await stream.write(b"data: [DONE]\n\n")
    await stream.write_eof()
    return stream


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the catalogue, as OpenAI lists models."""
    models = await request.app[TASKS].models(caller_of(request), fresh=True)
    data = [{"id": entry.model, "object": "model", "created": 0, "owned_by": entry.provider} for entry in models]
    return web.json_response({"object": "list", "data": data})


# --- videos ---------------------------------------------------------------------------------------------------
async def create_video(request: web.Request) -> web.Response:
    """POST /v1/videos (multipart, as the SDKs send it, or JSON)."""
    if request.content_type == "application/json":
        raw, body = await json_body(request)
    else:
        try:
            form = await request.post()
        except ValueError as error:
            raise bad_request(f"the body is not a valid form: {error}") from None
        if "input_reference" in form:
            raise bad_request("input_reference: not supported", "input_reference")
        body = {name: value for name, value in form.items() if isinstance(value, str)}
        # A multipart body's boundary differs per attempt: the retry key is made from the fields instead.
        raw = json.dumps(body, sort_keys=True).encode()
    caller = await creating_caller(request, raw, body.get("user"))
    tasks = request.app[TASKS]
    entry = await tasks.find_model(caller, str(body.get("model") or ""), TaskType.VIDEO.value)
    create = pb.CreateVideoTaskRequest(
        prompt=str(body.get("prompt") or ""),
        user_id=caller.user_id,
        provider=entry.provider,
        model=entry.model,
        aspect_ratio=aspect_ratio_of(str(body.get("size") or "")),
        priority=_priority(request),
    )
    created = await call(tasks.stub.CreateVideoTask, create, caller, CALL_SECONDS)
    task = await tasks.get(created.data.task_id, caller)
    return web.json_response(video_object(task), headers=_task_headers(task.task_id))


async def _video_task(request: web.Request, caller: Caller) -> pb.Task:
    video_id = request.match_info["video_id"]
    task = await request.app[TASKS].get(video_id, caller)
    if task.type != TaskType.VIDEO:
        raise OpenAIError(404, f"video {video_id!r} not found", code="not_found")
    return task


async def retrieve_video(request: web.Request) -> web.Response:
    """GET /v1/videos/{video_id}."""
    task = await _video_task(request, caller_of(request))
    headers = {"openai-poll-after-ms": str(VIDEO_POLL_AFTER_MS)} if not TaskStatus(task.status).is_final else {}
    return web.json_response(video_object(task), headers=headers)


async def list_videos(request: web.Request) -> web.Response:
    """GET /v1/videos?limit=&after=&order=desc: the caller's videos, newest first."""
    query = request.query
    if query.get("order", "desc") != "desc":
        raise bad_request("order: only 'desc' (newest first) is supported", "order")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise bad_request("limit: must be an integer", "limit") from None
    if not 1 <= limit <= VIDEO_LIST_MAX:
        raise bad_request(f"limit: must be between 1 and {VIDEO_LIST_MAX}", "limit")
    caller = caller_of(request)
    after = query.get("after")
    offset = await _offset_after(request, caller, after) if after else 0
    # One more than asked for says whether there is a next page.
    page = await _video_page(request, caller, limit + 1, offset)
    data = [video_object(task) for task in page[:limit]]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(page) > limit,
        }
    )


async def _video_page(request: web.Request, caller: Caller, limit: int, offset: int) -> list[pb.Task]:
    tasks = request.app[TASKS]
    listing = pb.ListTasksRequest(user_id=caller.user_id, type=TaskType.VIDEO.value, limit=limit, offset=offset)
    response = await call(tasks.stub.ListTasks, listing, caller, CALL_SECONDS)
    return list(response.data.tasks)


async def _offset_after(request: web.Request, caller: Caller, after: str) -> int:
    """The list position just past video `after` (OpenAI's cursor is the last id a page showed)."""
    for offset in range(0, VIDEO_CURSOR_SCAN, VIDEO_LIST_MAX):
        page = await _video_page(request, caller, VIDEO_LIST_MAX, offset)
        for index, task in enumerate(page):
            if task.task_id == after:
                return offset + index + 1
        if len(page) < VIDEO_LIST_MAX:
            break
    raise bad_request(f"after: video {after!r} is not among your {VIDEO_CURSOR_SCAN} newest", "after")


async def delete_video(request: web.Request) -> web.Response:
    """DELETE /v1/videos/{video_id}: a video still running is cancelled first (its upstream job with it, where
    the vendor can), then the task is deleted."""
    caller = caller_of(request)
    task = await _video_task(request, caller)
    tasks = request.app[TASKS]
    if not TaskStatus(task.status).is_final:
        try:
            await call(tasks.stub.CancelTask, pb.CancelTaskRequest(task_id=task.task_id), caller, CALL_SECONDS)
        except OpenAIError as error:
            if error.status != 409:  # it became final meanwhile: nothing left to cancel
                raise
    await call(tasks.stub.DeleteTask, pb.DeleteTaskRequest(task_id=task.task_id), caller, CALL_SECONDS)
    return web.json_response({"id": task.task_id, "object": "video.deleted", "deleted": True})


async def video_content(request: web.Request) -> web.StreamResponse:
    """GET /v1/videos/{video_id}/content: the video's bytes, streamed through."""
    if request.query.get("variant", "video") != "video":
        raise bad_request("variant: only 'video' is available", "variant")
    task = await _video_task(request, caller_of(request))
    if task.status != TaskStatus.COMPLETED:
        raise OpenAIError(
            404, f"video {task.task_id} has no content: it is {video_object(task)['status']}", code="video_not_ready"
        )
    content = await open_video(request.app[HTTP], request.app[SETTINGS].openai_compat_outputs_url, task)
    response = web.StreamResponse(headers={"content-type": content.content_type})
    if content.length is not None:
        response.content_length = content.length
    await response.prepare(request)
    async for chunk in content.chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def health(_request: web.Request) -> web.Response:
    """GET /healthz: the process answers (it holds no state of its own to be unready about)."""
    return web.json_response({"status": "ok"})


def build_app(settings: OpenAIDoorSettings) -> web.Application:
    """The door's application (used by `python -m openai_door` and by tests alike)."""
    app = web.Application(middlewares=[openai_errors], client_max_size=1 << 20)
    app[SETTINGS] = settings
    app.add_routes(
        [
            web.post("/v1/images/generations", create_image),
            web.post("/v1/chat/completions", create_chat_completion),
            web.get("/v1/models", list_models),
            web.post("/v1/videos", create_video),
            web.get("/v1/videos", list_videos),
            web.get("/v1/videos/{video_id}", retrieve_video),
            web.delete("/v1/videos/{video_id}", delete_video),
            web.get("/v1/videos/{video_id}/content", video_content),
            web.get("/healthz", health),
        ]
    )

    async def connections(app: web.Application) -> Any:
        redis = async_redis_client(settings)
        app[TASKS] = TaskClient(settings.openai_compat_task_service)
        app[RETRY_KEYS] = RetryKeys(redis, settings.openai_compat_retry_key_seconds)
        app[HTTP] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60))
        yield
        await app[HTTP].close()
        await app[TASKS].close()
        await redis.aclose()

    app.cleanup_ctx.append(connections)
    return app


def main() -> None:
    """Entry point of `python -m openai_door`: serve until SIGTERM, then let requests in flight finish."""
    settings = load_settings(OpenAIDoorSettings)
    configure_logging("openai_door", settings)
    configure_tracing("openai_door", settings)
    serve_metrics(settings.metrics_host, settings.metrics_port)
    log.info("openai door listening", host=settings.host, port=settings.port)
    web.run_app(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_grace,
        print=None,
        access_log=None,
        handle_signals=True,
    )
