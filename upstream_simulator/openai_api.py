"""OpenAI endpoints under ``/v1``: images, chat completions and Sora videos.

Wire format per upstream_apis.md §3: Bearer API key, JSON bodies (multipart
form for ``POST /v1/videos``), an ``x-request-id`` response header on every
answer, and errors as ``{"error": {"message", "type", "param", "code"}}``.
Rate-limit answers carry ``retry-after`` and ``retry-after-ms`` when
configured, which the openai SDK honours.
"""

from __future__ import annotations

import hmac
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

BASE = "/v1"
VENDOR = "openai"
CHAT_MODEL_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-")
VIDEO_MODELS = ("sora-2", "sora-2-pro")
VIDEO_SECONDS = ("4", "8", "12")
VIDEO_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
VIDEO_URL_TTL_S = 3600


class _ImageModel:
    """Constraints of one image model family."""

    def __init__(
        self, sizes: tuple[str, ...], max_n: int, qualities: tuple[str, ...], max_prompt: int, *, gpt: bool = False
    ) -> None:
        self.sizes, self.max_n, self.qualities, self.max_prompt, self.gpt = sizes, max_n, qualities, max_prompt, gpt


DALL_E_2 = _ImageModel(("256x256", "512x512", "1024x1024"), 10, ("standard",), 1000)
DALL_E_3 = _ImageModel(("1024x1024", "1792x1024", "1024x1792"), 1, ("standard", "hd"), 4000)
GPT_IMAGE = _ImageModel(
    ("auto", "1024x1024", "1536x1024", "1024x1536"), 10, ("auto", "low", "medium", "high"), 32000, gpt=True
)

# What an injected failure of each status looks like: (type, code, message).
_INJECTED: dict[int, tuple[str, str | None, str]] = {
    400: (
        "invalid_request_error",
        "content_policy_violation",
        "Your request was rejected as a result of our safety system. Your prompt may contain text that is "
        "not allowed by our safety system.",
    ),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
VIDEO_FAILURE = ("moderation_blocked", "The generated video was blocked by our content moderation system.")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _masked(key: str) -> str:
    return f"{key[:3]}****{key[-4:]}" if len(key) > 8 else "****"


class OpenAIAPI:
    """The OpenAI handlers bound to one simulator context."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        """aiohttp route table for the OpenAI endpoints."""
        return [
            web.post(f"{BASE}/images/generations", self._guard(self.images)),
            web.post(f"{BASE}/chat/completions", self._guard(self.chat)),
            web.post(f"{BASE}/videos", self._guard(self.create_video)),
            web.get(f"{BASE}/videos/{{video_id}}", self._guard(self.retrieve_video), allow_head=False),
            web.get(f"{BASE}/videos/{{video_id}}/content", self._guard(self.video_content), allow_head=False),
        ]

    # ----------------------------------------------------------------- wire helpers

    def _guard(self, handler: Handler) -> Handler:
        """Turn ``InvalidParam`` into OpenAI's 400 ``invalid_request_error``."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except InvalidParam as exc:
                code = "missing_required_parameter" if exc.missing else "invalid_value"
                message = f"Invalid '{exc.param}': {exc.message}."
                return self._error(400, "invalid_request_error", code, message, exc.param or None)

        return wrapped

    @staticmethod
    def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"x-request-id": f"req_{secrets.token_hex(16)}", **(extra or {})}

    def _respond(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(payload, status=status, headers=self._headers(headers))

    def _error(
        self,
        status: int,
        type_: str,
        code: str | None,
        message: str,
        param_name: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """OpenAI's error body."""
        error = {"message": message, "type": type_, "param": param_name, "code": code}
        return self._respond({"error": error}, status, headers)

    def _injected(self, injection: Injection) -> web.Response:
        status = injection.status
        type_, code, message = _INJECTED.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, "Simulated upstream failure.")
        )
        return self._error(status, type_, code, message, None, retry_after_headers(injection, with_ms=True))

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            raise Rejected(self._error(401, "invalid_request_error", None, message))
        if not hmac.compare_digest(token.encode(), self.ctx.settings.openai_api_key.encode()):
            message = (
                f"Incorrect API key provided: {_masked(token)}. "
                "You can find your API key at https://platform.openai.com/account/api-keys."
            )
            raise Rejected(self._error(401, "invalid_request_error", "invalid_api_key", message))

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Rejected(
                self._error(
                    400,
                    "invalid_request_error",
                    None,
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                    "your HTTP library correctly.)",
                )
            )
        return body

    def _model_not_found(self, model: str) -> Rejected:
        return Rejected(
            self._error(
                404,
                "invalid_request_error",
                "model_not_found",
                f"The model `{model}` does not exist or you do not have access to it.",
            )
        )

    # ----------------------------------------------------------------- images

    async def images(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/images/generations`` (dall-e-2, dall-e-3, gpt-image-*)."""
        await self.ctx.enter(request, "openai.images")
        self._authenticate(request)
        body = await self._json(request)
        prompt = param(body, "prompt", (str,), required=True)
        self.ctx.inject("openai.images", prompt, self._injected)
        model = param(body, "model", (str,), "dall-e-2")
        if model == "dall-e-2":
            spec = DALL_E_2
        elif model == "dall-e-3":
            spec = DALL_E_3
        elif model.startswith(("gpt-image", "chatgpt-image")):
            spec = GPT_IMAGE
        else:
            raise self._model_not_found(model)
        check(
            0 < len(prompt) <= spec.max_prompt,
            "prompt",
            f"string length must be between 1 and {spec.max_prompt} characters",
        )
        n = param(body, "n", (int,), 1)
        if spec.max_n == 1:
            check(n == 1, "n", "you must provide n=1 for this model")
        check(1 <= n <= spec.max_n, "n", f"expected a value between 1 and {spec.max_n}, but got {n} instead")
        size = param(body, "size", (str,), "auto" if spec.gpt else "1024x1024")
        check(size in spec.sizes, "size", f"'{size}' is not one of {', '.join(repr(s) for s in spec.sizes)}")
        quality = param(body, "quality", (str,), spec.qualities[0])
        check(quality in spec.qualities, "quality", f"'{quality}' is not one of {', '.join(spec.qualities)}")
        style = param(body, "style", (str,))
        if style is not None:
            check(model == "dall-e-3", "style", "style is only supported for dall-e-3")
            check(style in ("vivid", "natural"), "style", "must be one of 'vivid', 'natural'")
        response_format = param(body, "response_format", (str,))
        if spec.gpt:
            # GPT image models always answer base64 and reject the legacy parameter.
            check(response_format is None, "response_format", "unknown parameter for GPT image models")
            response_format = "b64_json"
        response_format = response_format or "url"
        check(response_format in ("url", "b64_json"), "response_format", "must be one of 'url', 'b64_json'")

        width, height = (1024, 1024) if size == "auto" else (int(x) for x in size.split("x"))
        created = int(time.time())
        data = []
        for index in range(n):
            key = f"{prompt}|{created}|{index}|{secrets.token_hex(4)}"
            item: dict[str, Any] = {}
            if response_format == "url":
                item["url"] = self.ctx.file_url(media.image_name(width, height, key))
            else:
                item["b64_json"] = media.image_b64(width, height, key)
            if model == "dall-e-3":
                item["revised_prompt"] = f"A detailed, high-quality image of {prompt.strip()}"
            data.append(item)
        payload: dict[str, Any] = {"created": created, "data": data}
        if spec.gpt:
            text_tokens = estimate_tokens(prompt)
            output_tokens = {"low": 272, "medium": 1056, "high": 4160}.get(quality, 1056) * n
            payload.update(
                background=param(body, "background", (str,), "opaque"),
                output_format=param(body, "output_format", (str,), "png"),
                quality="medium" if quality == "auto" else quality,
                size=f"{width}x{height}",
                usage={
                    "input_tokens": text_tokens,
                    "input_tokens_details": {"image_tokens": 0, "text_tokens": text_tokens},
                    "output_tokens": output_tokens,
                    "total_tokens": text_tokens + output_tokens,
                },
            )
        return self._respond(payload)

    # ----------------------------------------------------------------- chat

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        await self.ctx.enter(request, "openai.chat")
        self._authenticate(request)
        body = await self._json(request)
        messages = chat_messages(body, "empty array. Expected an array with minimum length 1")
        self.ctx.inject("openai.chat", all_text(messages), self._injected)
        model = param(body, "model", (str,), required=True)
        if not model.startswith(CHAT_MODEL_PREFIXES):
            raise self._model_not_found(model)
        limit = param(body, "max_completion_tokens", (int,)) or param(body, "max_tokens", (int,))
        check(limit is None or limit >= 1, "max_tokens", "expected a value >= 1")
        temperature = param(body, "temperature", (int, float), 1)
        check(0 <= temperature <= 2, "temperature", f"expected a value <= 2 and >= 0, but got {temperature} instead")
        n = param(body, "n", (int,), 1)
        check(1 <= n <= 128, "n", "expected a value between 1 and 128")
        check(not param(body, "stream", (bool,), False), "stream", "streaming is not supported by the simulator")

        reply = reply_for(last_user_text(messages), model)
        finish_reason = "stop"
        if limit is not None and estimate_tokens(reply) > limit:
            reply, finish_reason = truncate_to_tokens(reply, limit), "length"
        prompt_count, completion_count = prompt_tokens(messages), estimate_tokens(reply) * n
        choices: list[dict[str, Any]] = [
            {
                "index": index,
                "message": {"role": "assistant", "content": reply, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            for index in range(n)
        ]
        payload = {
            "id": f"chatcmpl-{secrets.token_urlsafe(21)[:29]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_count,
                "completion_tokens": completion_count,
                "total_tokens": prompt_count + completion_count,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": None,
        }
        return self._respond(payload)

    # ----------------------------------------------------------------- videos

    async def create_video(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/videos``: multipart form (prompt, model, seconds, size, input_reference)."""
        await self.ctx.enter(request, "openai.videos.create")
        self._authenticate(request)
        if request.content_type == "application/json":
            form: dict[str, Any] = await self._json(request)
        else:
            # multipart/form-data (what the SDK sends) or urlencoded; file parts are read and dropped.
            posted = await request.post()
            form = {k: v for k, v in posted.items() if isinstance(v, str)}
        prompt = param(form, "prompt", (str,), required=True)
        self.ctx.inject("openai.videos.create", prompt, self._injected)
        check(bool(prompt.strip()), "prompt", "must not be empty")
        model = param(form, "model", (str,), "sora-2")
        if model not in VIDEO_MODELS and not model.startswith("sora-2-20"):  # dated snapshots
            raise self._model_not_found(model)
        seconds = str(param(form, "seconds", (str, int), "4"))
        check(seconds in VIDEO_SECONDS, "seconds", f"'{seconds}' is not one of {', '.join(VIDEO_SECONDS)}")
        size = param(form, "size", (str,), "720x1280")
        check(size in VIDEO_SIZES, "size", f"'{size}' is not one of {', '.join(VIDEO_SIZES)}")

        job = Job(
            id=self.ctx.jobs.unique_id(lambda: f"video_{secrets.token_hex(16)}"),
            vendor=VENDOR,
            duration_s=self.ctx.video_seconds("openai.videos.create", "openai.videos.retrieve"),
            fail=wants_video_failure(prompt),
            data={"model": model, "seconds": seconds, "size": size, "prompt": prompt, "video": media.video_name()},
        )
        self.ctx.jobs.add(job)
        return self._respond(self._video_view(job))

    async def retrieve_video(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/videos/{id}``, with ``openai-poll-after-ms`` while the job is not finished."""
        await self.ctx.enter(request, "openai.videos.retrieve")
        self._authenticate(request)
        self.ctx.inject("openai.videos.retrieve", None, self._injected)
        job = self._job(request)
        view = self._video_view(job)
        headers = {}
        if view["status"] in ("queued", "in_progress"):
            # Tell the SDK's poll helper when to come back: soon, but not in a busy loop.
            headers["openai-poll-after-ms"] = str(int(min(1000, max(50, job.remaining_s() * 1000 / 2))))
        return self._respond(view, headers=headers)

    async def video_content(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/videos/{id}/content[?variant=video|thumbnail|spritesheet]``: raw bytes."""
        await self.ctx.enter(request, "openai.videos.content")
        self._authenticate(request)
        self.ctx.inject("openai.videos.content", None, self._injected)
        job = self._job(request)
        variant = request.query.get("variant", "video")
        check(variant in ("video", "thumbnail", "spritesheet"), "variant", "must be video, thumbnail or spritesheet")
        phase = job.phase()
        if phase is not Phase.SUCCEEDED:
            status = "failed" if phase is Phase.FAILED else "in_progress" if phase is Phase.RUNNING else "queued"
            raise Rejected(
                self._error(
                    404,
                    "invalid_request_error",
                    None,
                    f"Video is not ready for download (status: {status}).",
                )
            )
        if variant == "video":
            return web.Response(body=media.video_for_name(job.data["video"]), content_type="video/mp4",
                                headers=self._headers())  # fmt: skip
        width, height = (int(x) for x in job.data["size"].split("x"))
        # Thumbnails are served as PNG (the real service sends WebP/JPEG); only the video is byte-faithful.
        body = media.png_bytes(width // 4, height // 4, *media.colours_for(job.data["prompt"]))
        return web.Response(body=body, content_type="image/png", headers=self._headers())

    def _job(self, request: web.Request) -> Job:
        video_id = request.match_info["video_id"]
        job = self.ctx.jobs.get(video_id, VENDOR)
        if job is None:
            raise Rejected(
                self._error(404, "invalid_request_error", None, f"Video with id '{video_id}' not found.", None)
            )
        return job

    def _video_view(self, job: Job) -> dict[str, Any]:
        """The ``video`` object; status and progress computed from the clock."""
        phase = job.phase()
        status = {
            Phase.QUEUED: "queued",
            Phase.RUNNING: "in_progress",
            Phase.SUCCEEDED: "completed",
            Phase.FAILED: "failed",
        }[phase]
        finished = phase in (Phase.SUCCEEDED, Phase.FAILED)
        completed_at = int(job.created_wall + job.duration_s) if finished else None
        if phase is Phase.QUEUED:
            progress = 0
        elif finished:
            progress = 100
        else:
            progress = min(99, max(1, int(job.progress() * 100)))
        error = None
        if phase is Phase.FAILED:
            code, message = VIDEO_FAILURE
            error = {"code": code, "message": message}
        return {
            "id": job.id,
            "object": "video",
            "model": job.data["model"],
            "status": status,
            "progress": progress,
            "created_at": int(job.created_wall),
            "completed_at": completed_at,
            "expires_at": completed_at + VIDEO_URL_TTL_S if completed_at and phase is Phase.SUCCEEDED else None,
            "size": job.data["size"],
            "seconds": job.data["seconds"],
            "prompt": job.data["prompt"],
            "remixed_from_video_id": None,
            "error": error,
        }
