"""Volcengine Ark (火山方舟) endpoints under ``/api/v3``: Seedream images, chat and Seedance video tasks.

Wire format per upstream_apis.md §1: Bearer API key, JSON bodies in which the
SDK sends every unset optional parameter as an explicit ``null`` (treated as
absent here), the ``X-Client-Request-Id`` request header echoed back, and
errors as ``{"error": {"code", "message", "param", "type"}}``.
"""

from __future__ import annotations

import hmac
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from upstream_simulator import media
from upstream_simulator.context import InvalidParam, SimContext, chat_messages, check, param
from upstream_simulator.faults import Injection, Rejected, retry_after_headers, wants_video_failure
from upstream_simulator.jobs import Job, Phase
from upstream_simulator.text import (
    all_text,
    estimate_tokens,
    last_user_text,
    prompt_tokens,
    reply_for,
    truncate_to_tokens,
)

BASE = "/api/v3"
VENDOR = "ark"
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
SIZE_MIN, SIZE_MAX = 512, 2048  # Seedream 3.0 t2i: each side within [512, 2048]
RATIOS = {"16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"}
RESOLUTIONS = {"480p": 480, "720p": 720, "1080p": 1080}
CONTENT_TYPES = {"text", "image_url", "video_url", "audio_url", "draft_task"}
SEED_MAX = 2_147_483_647
FPS = 24
EXECUTION_EXPIRES_AFTER = 172_800
# Seedance accepts parameters written as text commands, e.g. "a dog --ratio 16:9 --dur 5".
_COMMAND = re.compile(r"--(\w+)\s+(\S+)")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_COMMAND_ALIASES = {"rt": "ratio", "rs": "resolution", "dur": "duration", "cf": "camerafixed", "wm": "watermark"}

_ERROR_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServiceError",
    503: "ServiceUnavailable",
}
# What an injected failure of each status looks like (codes from Ark's error-code page where known).
_INJECTED: dict[int, tuple[str, str]] = {
    400: (
        "InputTextSensitiveContentDetected",
        "The request failed because the input text may contain sensitive information.",
    ),
    401: ("AuthenticationError", "The API key or AK/SK in the request is missing or invalid."),
    403: ("AccessDenied", "The request failed because you do not have access to the requested resource."),
    404: ("InvalidEndpointOrModel.NotFound", "The model or endpoint does not exist or you do not have access to it."),
    429: (
        "RateLimitExceeded.EndpointRPMExceeded",
        "The request failed because you have exceeded the RPM limit of the endpoint. Please try again later.",
    ),
    500: ("InternalServiceError", "The service encountered an unexpected internal error."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please try again later."),
}
VIDEO_FAILURE = (
    "OutputVideoSensitiveContentDetected",
    "The request failed because the output video may contain sensitive information.",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _server_request_id() -> str:
    """An Ark-style server request id (``0217`` + milliseconds + random hex)."""
    return f"0217{int(time.time() * 1000)}{secrets.token_hex(12)}"


class ArkAPI:
    """The Ark handlers bound to one simulator context."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        """aiohttp route table for the Ark endpoints."""
        tasks = f"{BASE}/contents/generations/tasks"
        return [
            web.post(f"{BASE}/images/generations", self._guard(self.images)),
            web.post(f"{BASE}/chat/completions", self._guard(self.chat)),
            web.post(tasks, self._guard(self.create_task)),
            web.get(tasks, self._guard(self.list_tasks), allow_head=False),
            web.get(tasks + "/{task_id}", self._guard(self.get_task), allow_head=False),
            web.delete(tasks + "/{task_id}", self._guard(self.delete_task)),
        ]

    # ----------------------------------------------------------------- wire helpers

    def _guard(self, handler: Handler) -> Handler:
        """Turn ``InvalidParam`` raised by a handler into Ark's 400 error body."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except InvalidParam as exc:
                code = "MissingParameter" if exc.missing else "InvalidParameter"
                text = (
                    f"The request failed because it is missing one or multiple required parameters: {exc.message}."
                    if exc.missing
                    else f"The parameter `{exc.param}` specified in the request is not valid: {exc.message}."
                )
                return self._error(request, 400, code, text, exc.param)

        return wrapped

    def _respond(
        self, request: web.Request, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        """A JSON response carrying the echoed ``X-Client-Request-Id``."""
        all_headers = {"X-Client-Request-Id": request.headers.get("X-Client-Request-Id") or _server_request_id()}
        all_headers.update(headers or {})
        return web.json_response(payload, status=status, headers=all_headers)

    def _error(
        self,
        request: web.Request,
        status: int,
        code: str,
        message: str,
        param_name: str = "",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """Ark's error body; the message ends with the server request id like the real service."""
        error = {
            "code": code,
            "message": f"{message} Request id: {_server_request_id()}",
            "param": param_name,
            "type": _ERROR_TYPES.get(status, "BadRequest" if status < 500 else "InternalServiceError"),
        }
        return self._respond(request, {"error": error}, status, headers)

    def _injected(self, request: web.Request) -> Callable[[Injection], web.Response]:
        def render(injection: Injection) -> web.Response:
            code, message = _INJECTED.get(injection.status, ("SimulatedError", "Simulated upstream failure."))
            return self._error(request, injection.status, code, message, headers=retry_after_headers(injection))

        return render

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = self.ctx.settings.ark_api_key
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise Rejected(
                self._error(
                    request, 401, "AuthenticationError", "The API key or AK/SK in the request is missing or invalid."
                )
            )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise InvalidParam("", "the request body must be a JSON object")
        return body

    def _model(self, request: web.Request, body: dict[str, Any], family: str | None) -> str:
        """The model id; image/video endpoints only serve their model family (or an ``ep-`` endpoint id)."""
        model = param(body, "model", (str,), required=True)
        if family and family not in model and not model.startswith("ep-"):
            message = f"The model or endpoint {model} does not exist or you do not have access to it."
            raise Rejected(self._error(request, 404, "InvalidEndpointOrModel.NotFound", message, "model"))
        return model

    # ----------------------------------------------------------------- images

    async def images(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v3/images/generations`` (Seedream text-to-image)."""
        await self.ctx.enter(request, "ark.images")
        self._authenticate(request)
        body = await self._body(request)
        prompt = param(body, "prompt", (str,))
        self.ctx.inject("ark.images", prompt, self._injected(request))
        model = self._model(request, body, "seedream")
        if not prompt:
            raise InvalidParam("prompt", "the parameter `prompt` is required", reason="missing")
        size = param(body, "size", (str,), "1024x1024")
        match = _SIZE.match(size)
        if match is None:
            raise InvalidParam("size", f"`{size}` is not of the form WIDTHxHEIGHT")
        width, height = int(match.group(1)), int(match.group(2))
        check(
            SIZE_MIN <= width <= SIZE_MAX and SIZE_MIN <= height <= SIZE_MAX,
            "size",
            f"width and height must be within [{SIZE_MIN}, {SIZE_MAX}], got {size}",
        )
        response_format = param(body, "response_format", (str,), "url")
        check(response_format in ("url", "b64_json"), "response_format", "must be one of url, b64_json")
        seed = param(body, "seed", (int,), -1)
        check(-1 <= seed <= SEED_MAX, "seed", f"must be within [-1, {SEED_MAX}]")
        guidance = param(body, "guidance_scale", (int, float), 2.5)
        check(1 <= guidance <= 10, "guidance_scale", "must be within [1, 10]")
        param(body, "watermark", (bool,), True)
        check(not param(body, "stream", (bool,), False), "stream", "streaming is not supported by the simulator")
        check(body.get("image") is None or "t2i" not in model, "image", f"the model {model} does not accept images")

        actual_seed = seed if seed >= 0 else random.randint(0, SEED_MAX)
        key = f"{prompt}|{actual_seed}"
        item: dict[str, Any] = {"size": f"{width}x{height}"}
        if response_format == "url":
            item["url"] = self.ctx.file_url(media.image_name(width, height, key))
        else:
            item["b64_json"] = media.image_b64(width, height, key)
        tokens = width * height // 256  # 1024x1024 -> 4096, as on the documented wire
        payload = {
            "model": model,
            "created": int(time.time()),
            "data": [item],
            "usage": {"generated_images": 1, "output_tokens": tokens, "total_tokens": tokens},
        }
        return self._respond(request, payload)

    # ----------------------------------------------------------------- chat

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v3/chat/completions`` (OpenAI-compatible chat)."""
        await self.ctx.enter(request, "ark.chat")
        self._authenticate(request)
        body = await self._body(request)
        messages = chat_messages(body, "must contain at least one message")
        self.ctx.inject("ark.chat", all_text(messages), self._injected(request))
        model = self._model(request, body, None)
        limit = param(body, "max_completion_tokens", (int,)) or param(body, "max_tokens", (int,))
        check(limit is None or limit >= 1, "max_tokens", "must be a positive integer")
        temperature = param(body, "temperature", (int, float), 1.0)
        check(0 <= temperature <= 2, "temperature", "must be within [0, 2]")
        top_p = param(body, "top_p", (int, float), 0.7)
        check(0 <= top_p <= 1, "top_p", "must be within [0, 1]")
        check(not param(body, "stream", (bool,), False), "stream", "streaming is not supported by the simulator")

        reply = reply_for(last_user_text(messages), model)
        finish_reason = "stop"
        if limit is not None and estimate_tokens(reply) > limit:
            reply, finish_reason = truncate_to_tokens(reply, limit), "length"
        prompt_count, completion_count = prompt_tokens(messages), estimate_tokens(reply)
        payload = {
            "id": _server_request_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish_reason,
                    "logprobs": None,
                    "message": {"role": "assistant", "content": reply},
                }
            ],
            "usage": {
                "prompt_tokens": prompt_count,
                "completion_tokens": completion_count,
                "total_tokens": prompt_count + completion_count,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
        return self._respond(request, payload)

    # ----------------------------------------------------------------- video tasks

    async def create_task(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v3/contents/generations/tasks`` (Seedance): answers ``{"id": "cgt-…"}``."""
        await self.ctx.enter(request, "ark.tasks.create")
        self._authenticate(request)
        body = await self._body(request)
        content = param(body, "content", (list,), required=True)
        check(bool(content), "content", "must contain at least one item")
        texts: list[str] = []
        has_image = False
        for item in content:
            check(isinstance(item, dict) and item.get("type") in CONTENT_TYPES, "content", "bad content item type")
            if item["type"] == "text":
                check(isinstance(item.get("text"), str), "content.text", "must be a string")
                texts.append(item["text"])
            elif item["type"] == "image_url":
                image_url = item.get("image_url")
                check(
                    isinstance(image_url, dict) and isinstance(image_url.get("url"), str),
                    "content.image_url",
                    "needs url",
                )
                has_image = True
        prompt = " ".join(texts)
        self.ctx.inject("ark.tasks.create", prompt, self._injected(request))
        model = self._model(request, body, "seedance")
        check(bool(texts) or has_image, "content", "needs a text prompt or an image")

        # Body fields win over inline "--ratio 16:9" style commands.
        merged = {**_commands(prompt), **{k: v for k, v in body.items() if v is not None}}
        ratio = param(merged, "ratio", (str,), "adaptive" if has_image else "16:9")
        check(ratio in RATIOS, "ratio", f"must be one of {', '.join(sorted(RATIOS))}")
        resolution = param(merged, "resolution", (str,), "1080p" if "pro" in model else "720p")
        check(resolution in RESOLUTIONS, "resolution", "must be one of 480p, 720p, 1080p")
        duration = param(merged, "duration", (int,), 5)
        check(2 <= duration <= 12, "duration", "must be within [2, 12]")
        seed = param(merged, "seed", (int,), -1)
        check(-1 <= seed <= SEED_MAX, "seed", f"must be within [-1, {SEED_MAX}]")
        param(merged, "camera_fixed", (bool,))
        param(merged, "watermark", (bool,))
        return_last_frame = param(merged, "return_last_frame", (bool,), False)
        service_tier = param(merged, "service_tier", (str,), "default")
        expires_after = param(merged, "execution_expires_after", (int,), EXECUTION_EXPIRES_AFTER)
        generate_audio = param(merged, "generate_audio", (bool,))
        draft = param(merged, "draft", (bool,))

        actual_seed = seed if seed >= 0 else random.randint(0, SEED_MAX)
        task_id = self.ctx.jobs.unique_id(_task_id)
        data: dict[str, Any] = {
            "model": model,
            "seed": actual_seed,
            "resolution": resolution,
            "ratio": ratio,
            "duration": duration,
            "service_tier": service_tier,
            "execution_expires_after": expires_after,
            "video": media.video_name(),
        }
        if generate_audio is not None:
            data["generate_audio"] = generate_audio
        if draft is not None:
            data["draft"] = draft
        if return_last_frame:
            width, height = _frame_size(resolution, ratio)
            data["last_frame"] = media.image_name(width, height, f"{prompt}|{actual_seed}")
        job = Job(
            id=task_id,
            vendor=VENDOR,
            duration_s=self.ctx.video_seconds("ark.tasks.create", "ark.tasks.get"),
            fail=wants_video_failure(prompt),
            data=data,
        )
        self.ctx.jobs.add(job)
        return self._respond(request, {"id": task_id})

    async def get_task(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/contents/generations/tasks/{id}``: the task object, state computed from time."""
        await self.ctx.enter(request, "ark.tasks.get")
        self._authenticate(request)
        self.ctx.inject("ark.tasks.get", None, self._injected(request))
        job = self._job(request)
        return self._respond(request, self._task_view(job))

    async def list_tasks(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/contents/generations/tasks?page_num&page_size&filter.status&filter.task_ids&filter.model``."""
        await self.ctx.enter(request, "ark.tasks.list")
        self._authenticate(request)
        self.ctx.inject("ark.tasks.list", None, self._injected(request))
        query = request.query
        page_num = _int_query(query.get("page_num"), "page_num", 1, 1, 500)
        page_size = _int_query(query.get("page_size"), "page_size", 10, 1, 500)
        status = query.get("filter.status")
        ids = set(query.getall("filter.task_ids", []))
        model = query.get("filter.model")
        items = [self._task_view(job) for job in self.ctx.jobs.of_vendor(VENDOR)]
        items = [
            item
            for item in items
            if (not status or item["status"] == status)
            and (not ids or item["id"] in ids)
            and (not model or item["model"] == model)
        ]
        start = (page_num - 1) * page_size
        return self._respond(request, {"total": len(items), "items": items[start : start + page_size]})

    async def delete_task(self, request: web.Request) -> web.StreamResponse:
        """``DELETE …/tasks/{id}``: cancels a queued task, deletes a finished one's record."""
        await self.ctx.enter(request, "ark.tasks.delete")
        self._authenticate(request)
        self.ctx.inject("ark.tasks.delete", None, self._injected(request))
        job = self._job(request)
        phase = job.phase()
        if phase is Phase.QUEUED:
            job.cancelled_wall = time.time()
        elif phase in (Phase.SUCCEEDED, Phase.FAILED):
            self.ctx.jobs.remove(job.id)
        else:
            raise InvalidParam("task_id", f"a task in status {phase.value} cannot be cancelled or deleted")
        return self._respond(request, {})

    def _job(self, request: web.Request) -> Job:
        task_id = request.match_info["task_id"]
        job = self.ctx.jobs.get(task_id, VENDOR)
        if job is None:
            raise Rejected(
                self._error(request, 404, "ResourceNotFound", f"The specified task {task_id} is not found.", "task_id")
            )
        return job

    def _task_view(self, job: Job) -> dict[str, Any]:
        """The task object as ``GET`` returns it."""
        data = job.data
        phase = job.phase()
        view: dict[str, Any] = {
            "id": job.id,
            "model": data["model"],
            "status": phase.value,  # Phase values are Ark's status strings
            "created_at": int(job.created_wall),
            "updated_at": int(job.updated_wall()),
            "seed": data["seed"],
            "resolution": data["resolution"],
            "ratio": data["ratio"],
            "duration": data["duration"],
            "framespersecond": FPS,
            "service_tier": data["service_tier"],
            "execution_expires_after": data["execution_expires_after"],
            "error": None,
        }
        for optional in ("generate_audio", "draft"):
            if optional in data:
                view[optional] = data[optional]
        if phase is Phase.SUCCEEDED:
            content = {"video_url": self.ctx.file_url(data["video"])}
            if "last_frame" in data:
                content["last_frame_url"] = self.ctx.file_url(data["last_frame"])
            view["content"] = content
            width, height = _frame_size(data["resolution"], data["ratio"])
            tokens = width * height * FPS * data["duration"] // 1024
            view["usage"] = {"completion_tokens": tokens, "total_tokens": tokens}
        elif phase is Phase.FAILED:
            code, message = VIDEO_FAILURE
            view["error"] = {"code": code, "message": f"{message} Request id: {_server_request_id()}"}
        return view


def _task_id() -> str:
    """An Ark task id such as ``cgt-20250331175019-68d9t``."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(5))
    return f"cgt-{time.strftime('%Y%m%d%H%M%S')}-{suffix}"


def _commands(prompt: str) -> dict[str, Any]:
    """Parse Seedance inline text commands (``--ratio 16:9 --dur 5 --seed 11 --cf false``)."""
    found: dict[str, Any] = {}
    for name, raw in _COMMAND.findall(prompt):
        key = _COMMAND_ALIASES.get(name.lower(), name.lower())
        if key in ("duration", "seed"):
            try:
                found[key] = int(raw)
            except ValueError as exc:
                raise InvalidParam(key, f"`--{name} {raw}` is not an integer") from exc
        elif key in ("camerafixed", "watermark"):
            check(raw.lower() in ("true", "false"), key, f"`--{name} {raw}` must be true or false")
            found["camera_fixed" if key == "camerafixed" else key] = raw.lower() == "true"
        elif key in ("ratio", "resolution"):
            found[key] = raw
    return found


def _frame_size(resolution: str, ratio: str) -> tuple[int, int]:
    """Output frame size in pixels for a resolution and aspect ratio (``adaptive`` as 16:9)."""
    short = RESOLUTIONS[resolution]
    a, b = (16, 9) if ratio == "adaptive" else (int(x) for x in ratio.split(":"))
    if a >= b:
        return round(short * a / b), short
    return short, round(short * b / a)


def _int_query(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidParam(name, "must be an integer") from exc
    check(low <= value <= high, name, f"must be within [{low}, {high}]")
    return value
