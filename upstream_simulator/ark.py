"""Volcengine Ark (火山方舟) endpoints under ``/api/v3``: Seedream images, chat and Seedance video tasks.

Wire format per upstream_apis.md §1: Bearer API key, JSON bodies in which the
SDK sends every unset optional parameter as an explicit ``null`` (treated as
absent here), the ``X-Client-Request-Id`` request header echoed back, and
errors as ``{"error": {"code", "message", "param", "type"}}``.

As strict as the vendor:

* Models: only the ids ``catalogue.toml`` lists for the endpoint (or an
  ``ep-…`` endpoint id); others are 404 ``InvalidEndpointOrModel.NotFound``.
* Parameters: only those the SDK sends (``IMAGE_PARAMS``, ``CHAT_PARAMS``,
  ``TASK_PARAMS``); another is 400 ``InvalidParameter`` naming it (Ark's
  handling of unknown fields is not confirmed: the simulator refuses them so a
  misspelt parameter cannot pass unnoticed). Seedream 3.0 and 4.x, and each
  Seedance family, have their own rules (``_SEEDANCE``), from 3P copies of
  Ark's docs. The body must be ``Content-Type: application/json``.
* Limits: counted per API key; over ``rate_limit`` per ``rate_window_s`` is 429
  ``RateLimitExceeded.EndpointRPMExceeded``, over ``concurrency_limit`` 429
  ``ServerOverloaded`` (⚠ code not confirmed), an exhausted quota 403
  ``AccountOverdueError``. No ``Retry-After``: the SDK ignores it (upstream_apis.md §1.6).
* Media: images are JPEG (Ark's links are ``….jpeg``), links expire after 24 h
  (``url_lifetime_s`` of the endpoint shortens it), a video's link 24 h after it finished.
* Tasks: ``DELETE`` cancels a queued task and deletes the record of a finished
  (succeeded / failed) one; a running or cancelled task cannot be deleted (400).
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
from upstream_simulator.catalogue import ModelEntry
from upstream_simulator.context import (
    TRANSPORT_KEY,
    InvalidParam,
    Refusal,
    SimContext,
    api_key_of,
    chat_messages,
    check,
    param,
)
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
# Seedream 4.x: "1K" / "2K" / "4K", or WIDTHxHEIGHT with 1280x720 .. 4096x4096 pixels and aspect 1/16 .. 16.
SEEDREAM4_PRESETS = {"1K": (1024, 1024), "2K": (2048, 2048), "4K": (4096, 4096)}
SEEDREAM4_PIXELS = (1280 * 720, 4096 * 4096)
SEEDREAM4_MAX_IMAGES = 10
RATIOS = {"16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"}
RESOLUTIONS = {"480p": 480, "720p": 720, "1080p": 1080}
URL_TTL_S = 24 * 3600  # Ark's image and video links are valid 24 h (upstream_apis.md §1.3, §1.5)

# The bodies the SDK sends (volcengine-ark-runtime 5.0.54), every key present, unset ones as null.
IMAGE_PARAMS = frozenset(
    [
        "model",
        "prompt",
        "image",
        "response_format",
        "size",
        "seed",
        "guidance_scale",
        "watermark",
        "optimize_prompt",
        "optimize_prompt_options",
        "sequential_image_generation",
        "sequential_image_generation_options",
        "tools",
        "output_format",
        "layer_decomposition",
        "stream",
    ]
)
CHAT_PARAMS = frozenset(
    [
        "messages",
        "model",
        "frequency_penalty",
        "function_call",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "presence_penalty",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "repetition_penalty",
        "n",
        "parallel_tool_calls",
        "service_tier",
        "tool_choice",
        "response_format",
        "thinking",
        "max_completion_tokens",
        "reasoning_effort",
    ]
)
TASK_PARAMS = frozenset(
    [
        "model",
        "content",
        "safety_identifier",
        "callback_url",
        "return_last_frame",
        "service_tier",
        "execution_expires_after",
        "priority",
        "generate_audio",
        "draft",
        "camera_fixed",
        "watermark",
        "seed",
        "resolution",
        "ratio",
        "duration",
        "frames",
        "tools",
        "output_format",
        "omni_reference_task_type",
    ]
)
# Image parameters each Seedream family refuses (3P copies of Ark doc 82379/1541523).
_SEEDREAM_REFUSES = {
    "seedream-3": {
        "sequential_image_generation",
        "sequential_image_generation_options",
        "optimize_prompt_options",
        "layer_decomposition",
        "tools",
        "output_format",
    },
    "seedream-4": {"seed", "guidance_scale", "layer_decomposition", "tools"},
}


class _Seedance:
    """The rules of one Seedance family: durations, default resolution, image input, extras."""

    def __init__(
        self,
        durations: range | tuple[int, ...],
        resolution: str,
        *,
        image: str = "optional",
        extras: frozenset[str] = frozenset(),
    ) -> None:
        self.durations, self.resolution, self.image, self.extras = durations, resolution, image, extras


_SEEDANCE = {
    "seedance-1.0-pro": _Seedance(range(2, 13), "1080p"),
    "seedance-1.0-lite-t2v": _Seedance((5, 10), "720p", image="refused"),
    "seedance-1.0-lite-i2v": _Seedance((5, 10), "720p", image="required"),
    "seedance-1.5-pro": _Seedance(range(4, 13), "720p", extras=frozenset({"generate_audio", "draft"})),
}
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
IMAGE_FAILURE = (
    "OutputImageSensitiveContentDetected",
    "The request failed because the output image may contain sensitive information.",
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

    async def _admit(self, request: web.Request, endpoint: str) -> None:
        """Authenticate, then apply the counted limits and the quota of the caller's key."""
        self._authenticate(request)

        def render(refusal: Refusal, limit: int) -> web.Response:
            if refusal == "quota":
                message = "The request failed because your account has an overdue balance."
                return self._error(request, 403, "AccountOverdueError", message)
            if refusal == "concurrency":
                message = "The service is currently unable to handle additional requests due to server overload."
                return self._error(request, 429, "ServerOverloaded", message)
            message = (
                f"The request failed because you have exceeded the RPM limit ({limit}) of the endpoint. "
                "Please try again later."
            )
            return self._error(request, 429, "RateLimitExceeded.EndpointRPMExceeded", message)

        await self.ctx.admit(request, endpoint, api_key_of(request), render)

    async def _body(self, request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise InvalidParam("Content-Type", "the request body must be sent as application/json")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise InvalidParam("", "the request body must be a JSON object")
        for name in body:
            if name not in allowed:
                raise InvalidParam(name, "unknown parameter")
        return body

    def _model(self, request: web.Request, body: dict[str, Any], api: str) -> ModelEntry:
        """The catalogue entry of the model (or ``ep-`` endpoint id) this endpoint serves; 404 otherwise."""
        model = param(body, "model", (str,), required=True)
        found = self.ctx.catalogue.lookup(VENDOR, api, model)
        if found.status == "served" and found.entry is not None:
            return found.entry
        if found.status == "retired":
            message = f"The model {model} has been retired and is no longer available."
        else:
            message = f"The model or endpoint {model} does not exist or you do not have access to it."
        raise Rejected(self._error(request, 404, "InvalidEndpointOrModel.NotFound", message, "model"))

    # ----------------------------------------------------------------- images

    async def images(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v3/images/generations`` (Seedream 3.0 and 4.x text-to-image)."""
        await self.ctx.enter(request, "ark.images")
        await self._admit(request, "ark.images")
        body = await self._body(request, IMAGE_PARAMS)
        prompt = param(body, "prompt", (str,))
        self.ctx.inject("ark.images", prompt, self._injected(request))
        entry = self._model(request, body, "images")
        model, family = entry.name, entry.family
        if not prompt:
            raise InvalidParam("prompt", "the parameter `prompt` is required", reason="missing")
        for name in sorted(_SEEDREAM_REFUSES[family]):
            check(body.get(name) is None, name, f"the model {model} does not support this parameter")
        if family == "seedream-3":
            width, height = _seedream3_size(param(body, "size", (str,), "1024x1024"))
            check(body.get("image") is None, "image", f"the model {model} does not accept images")
            seed = param(body, "seed", (int,), -1)
            check(-1 <= seed <= SEED_MAX, "seed", f"must be within [-1, {SEED_MAX}]")
            guidance = param(body, "guidance_scale", (int, float), 2.5)
            check(1 <= guidance <= 10, "guidance_scale", "must be within [1, 10]")
        else:
            width, height = _seedream4_size(param(body, "size", (str,), "2048x2048"))
            images = param(body, "image", (str, list))
            if isinstance(images, list):
                check(len(images) <= SEEDREAM4_MAX_IMAGES, "image", f"at most {SEEDREAM4_MAX_IMAGES} images")
                check(all(isinstance(i, str) for i in images), "image", "must be URLs or base64 strings")
            sequential = param(body, "sequential_image_generation", (str,), "disabled")
            check(sequential in ("auto", "disabled"), "sequential_image_generation", "must be auto or disabled")
            param(body, "sequential_image_generation_options", (dict,))
            param(body, "optimize_prompt_options", (dict,))
            seed = -1
        output_format = param(body, "output_format", (str,), "jpeg")
        check(output_format in ("jpeg", "png"), "output_format", "must be jpeg or png")
        response_format = param(body, "response_format", (str,), "url")
        check(response_format in ("url", "b64_json"), "response_format", "must be one of url, b64_json")
        param(body, "watermark", (bool,), True)
        param(body, "optimize_prompt", (bool,))
        check(not param(body, "stream", (bool,), False), "stream", "streaming is not supported by the simulator")

        actual_seed = seed if seed >= 0 else random.randint(0, SEED_MAX)
        key = f"{prompt}|{actual_seed}"
        item: dict[str, Any] = {"size": f"{width}x{height}"}
        if request.get(TRANSPORT_KEY) == "image_error":
            # Ark's per-image failure: HTTP 200, and this image carries an error instead of data.
            code, message = IMAGE_FAILURE
            item = {"error": {"code": code, "message": message}}
        elif response_format == "url":
            expires_at = time.time() + self.ctx.url_lifetime("ark.images", URL_TTL_S)
            item["url"] = self.ctx.file_url(self.ctx.signer.image_name(width, height, key, output_format), expires_at)
        else:
            item["b64_json"] = media.image_b64(width, height, key, output_format)
        tokens = width * height // 256  # 1024x1024 -> 4096, as on the documented wire
        generated = 0 if "error" in item else 1
        payload = {
            "model": model,
            "created": int(time.time()),
            "data": [item],
            "usage": {"generated_images": generated, "output_tokens": tokens * generated,
                      "total_tokens": tokens * generated},
        }  # fmt: skip
        return self._respond(request, payload)

    # ----------------------------------------------------------------- chat

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v3/chat/completions`` (OpenAI-compatible chat)."""
        await self.ctx.enter(request, "ark.chat")
        await self._admit(request, "ark.chat")
        body = await self._body(request, CHAT_PARAMS)
        messages = chat_messages(body, "must contain at least one message")
        self.ctx.inject("ark.chat", all_text(messages), self._injected(request))
        model = self._model(request, body, "chat").name
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
        await self._admit(request, "ark.tasks.create")
        body = await self._body(request, TASK_PARAMS)
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
        entry = self._model(request, body, "tasks")
        model, rules = entry.name, _SEEDANCE[entry.family]
        check(bool(texts) or has_image, "content", "needs a text prompt or an image")
        check(not (rules.image == "refused" and has_image), "content", f"the model {model} does not accept images")
        check(not (rules.image == "required" and not has_image), "content", f"the model {model} needs an image")
        for name in ("generate_audio", "draft"):
            check(body.get(name) is None or name in rules.extras, name, f"the model {model} does not support it")

        # Body fields win over inline "--ratio 16:9" style commands.
        merged = {**_commands(prompt), **{k: v for k, v in body.items() if v is not None}}
        ratio = param(merged, "ratio", (str,), "adaptive" if has_image else "16:9")
        check(ratio in RATIOS, "ratio", f"must be one of {', '.join(sorted(RATIOS))}")
        resolution = param(merged, "resolution", (str,), rules.resolution)
        check(resolution in RESOLUTIONS, "resolution", "must be one of 480p, 720p, 1080p")
        duration = param(merged, "duration", (int,), 5)
        allowed = (
            f"[{rules.durations.start}, {rules.durations.stop - 1}]"
            if isinstance(rules.durations, range)
            else " or ".join(map(str, rules.durations))
        )
        check(duration in rules.durations, "duration", f"must be {allowed} for {model}")
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
            "video": self.ctx.signer.video_name(),
            "url_ttl": self.ctx.url_lifetime("ark.tasks.create", URL_TTL_S),
        }
        if generate_audio is not None:
            data["generate_audio"] = generate_audio
        if draft is not None:
            data["draft"] = draft
        if return_last_frame:
            width, height = _frame_size(resolution, ratio)
            data["last_frame"] = self.ctx.signer.image_name(width, height, f"{prompt}|{actual_seed}")
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
        await self._admit(request, "ark.tasks.get")
        self.ctx.inject("ark.tasks.get", None, self._injected(request))
        job = self._job(request)
        return self._respond(request, self._task_view(job))

    async def list_tasks(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v3/contents/generations/tasks?page_num&page_size&filter.status&filter.task_ids&filter.model``."""
        await self.ctx.enter(request, "ark.tasks.list")
        await self._admit(request, "ark.tasks.list")
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
        await self._admit(request, "ark.tasks.delete")
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
            # Links are presigned when the task finishes and valid for url_ttl from then.
            expires_at = job.created_wall + job.duration_s + data["url_ttl"]
            content = {"video_url": self.ctx.file_url(data["video"], expires_at)}
            if "last_frame" in data:
                content["last_frame_url"] = self.ctx.file_url(data["last_frame"], expires_at)
            view["content"] = content
            width, height = _frame_size(data["resolution"], data["ratio"])
            tokens = width * height * FPS * data["duration"] // 1024
            view["usage"] = {"completion_tokens": tokens, "total_tokens": tokens}
        elif phase is Phase.FAILED:
            code, message = VIDEO_FAILURE
            view["error"] = {"code": code, "message": f"{message} Request id: {_server_request_id()}"}
        return view


def _seedream3_size(size: str) -> tuple[int, int]:
    match = _SIZE.match(size)
    if match is None:
        raise InvalidParam("size", f"`{size}` is not of the form WIDTHxHEIGHT")
    width, height = int(match.group(1)), int(match.group(2))
    check(
        SIZE_MIN <= width <= SIZE_MAX and SIZE_MIN <= height <= SIZE_MAX,
        "size",
        f"width and height must be within [{SIZE_MIN}, {SIZE_MAX}], got {size}",
    )
    return width, height


def _seedream4_size(size: str) -> tuple[int, int]:
    if size in SEEDREAM4_PRESETS:
        return SEEDREAM4_PRESETS[size]
    match = _SIZE.match(size)
    if match is None:
        raise InvalidParam("size", f"`{size}` is not 1K, 2K, 4K or of the form WIDTHxHEIGHT")
    width, height = int(match.group(1)), int(match.group(2))
    low, high = SEEDREAM4_PIXELS
    check(low <= width * height <= high, "size", f"the pixel count must be within [{low}, {high}], got {size}")
    check(width <= 16 * height and height <= 16 * width, "size", "the aspect ratio must be within [1/16, 16]")
    return width, height


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
