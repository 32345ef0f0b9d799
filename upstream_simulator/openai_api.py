"""OpenAI endpoints under ``/v1``: images, chat completions and Sora videos.

Wire format per upstream_apis.md §3: Bearer API key, JSON bodies (multipart
form for ``POST /v1/videos``), an ``x-request-id`` response header on every
answer, and errors as ``{"error": {"message", "type", "param", "code"}}``.

As strict as the vendor:

* Models: only those ``catalogue.toml`` lists as served today; an unknown one
  is 404 ``model_not_found``, a retired one 404 ``model_not_found`` saying it
  has been deprecated (the catalogue's ``grace`` keeps the gateway's seed
  models served for now).
* Parameters: only those the API defines (the SDK's ``*CreateParams``); an
  unknown one is 400 — chat: "Unrecognized request argument supplied: X",
  images and videos: "Unknown parameter: 'X'." (``unknown_parameter``). Per
  model: ``max_tokens`` is refused by reasoning models (gpt-5.x, o-series:
  "Use 'max_completion_tokens' instead."), ``reasoning_effort`` by the
  others; DALL·E-only parameters (``response_format``, ``style``, quality
  ``standard``/``hd``) by GPT image models and GPT-image-only ones by DALL·E.
  A JSON endpoint needs ``Content-Type: application/json``.
* Limits: counted per API key (``rate_limit``/``rate_window_s``,
  ``concurrency_limit``): 429 ``rate_limit_exceeded``; an exhausted quota
  (``quota_exhausted``) is 429 ``insufficient_quota`` (not worth retrying).
  Counted refusals carry no ``Retry-After``: upstream_apis.md confirms the SDK
  honours ``retry-after(-ms)`` but not that the vendor sends it. Injected
  faults with ``retry_after_s`` still send both headers (a test knob).
* Videos: ``GET /v1/videos`` (cursor page), ``DELETE /v1/videos/{id}`` (only a
  completed or failed video, as the SDK documents; there is no cancel of a
  running one), and content downloads refused once ``expires_at`` has passed.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from upstream_simulator import media
from upstream_simulator.catalogue import ModelEntry
from upstream_simulator.context import (
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

BASE = "/v1"
VENDOR = "openai"
VIDEO_SECONDS = ("4", "8", "12")
VIDEO_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
VIDEO_ASSETS_TTL_S = 3600  # how long a completed video's assets stay downloadable (expires_at)
IMAGE_URL_TTL_S = 3600  # DALL·E URLs are valid 60 min (upstream_apis.md §3.2)
DEPRECATIONS_URL = "https://platform.openai.com/docs/deprecations"
_WXH = re.compile(r"^(\d{2,5})x(\d{2,5})$")

# The request bodies the API defines (openai 3.57: CompletionCreateParams, ImageGenerateParams,
# VideoCreateParams); tests/upstream_simulator keeps these in step with the installed SDK.
CHAT_PARAMS = frozenset(
    [
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    ]
)
IMAGE_PARAMS = frozenset(
    [
        "prompt",
        "background",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "model",
        "moderation",
        "n",
        "output_compression",
        "output_format",
        "partial_images",
        "quality",
        "response_format",
        "safety_identifier",
        "size",
        "style",
        "svg",
        "user",
        "stream",
    ]
)
VIDEO_PARAMS = frozenset(["prompt", "input_reference", "model", "seconds", "size"])
# Parameters only GPT image models take, and only DALL·E models take.
GPT_IMAGE_ONLY = frozenset(
    [
        "background",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "moderation",
        "output_compression",
        "output_format",
        "partial_images",
        "svg",
    ]
)
DALL_E_ONLY = frozenset({"response_format", "style"})


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
# gpt-image-2 and 2.5: any WIDTHxHEIGHT (multiples of 16, aspect 1:3 .. 3:1, at most 3840x2160's pixels)
# besides the standard sizes, and two more qualities.
GPT_IMAGE_2 = _ImageModel(
    ("auto", "1024x1024", "1536x1024", "1024x1536"),
    10,
    ("auto", "low", "medium", "high", "xhigh", "max"),
    32000,
    gpt=True,
)
IMAGE_FAMILIES = {"dall-e-2": DALL_E_2, "dall-e-3": DALL_E_3, "gpt-image": GPT_IMAGE, "gpt-image-2": GPT_IMAGE_2}
MAX_PIXELS = 3840 * 2160

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
            web.get(f"{BASE}/videos", self._guard(self.list_videos), allow_head=False),
            web.get(f"{BASE}/videos/{{video_id}}", self._guard(self.retrieve_video), allow_head=False),
            web.delete(f"{BASE}/videos/{{video_id}}", self._guard(self.delete_video)),
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

    async def _admit(self, request: web.Request, endpoint: str) -> None:
        """Authenticate, then apply the counted limits and the quota of the caller's key."""
        self._authenticate(request)
        await self.ctx.admit(request, endpoint, api_key_of(request), self._limited)

    def _limited(self, refusal: Refusal, limit: int) -> web.Response:
        if refusal == "quota":
            message = (
                "You exceeded your current quota, please check your plan and billing details. For more "
                "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
            )
            return self._error(429, "insufficient_quota", "insufficient_quota", message)
        what = "concurrent requests" if refusal == "concurrency" else "requests"
        message = f"Rate limit reached for {what}: Limit {limit}, Used {limit}, Requested 1. Please try again later."
        return self._error(429, "requests", "rate_limit_exceeded", message)

    def _unknown(self, body: dict[str, Any], allowed: frozenset[str], *, chat: bool = False) -> None:
        """Refuse the first parameter the API does not define, as the API words it."""
        for name in body:
            if name not in allowed:
                if chat:
                    raise Rejected(
                        self._error(
                            400, "invalid_request_error", None, f"Unrecognized request argument supplied: {name}"
                        )
                    )
                raise self._unknown_parameter(name)

    def _unknown_parameter(self, name: str) -> Rejected:
        return Rejected(
            self._error(400, "invalid_request_error", "unknown_parameter", f"Unknown parameter: '{name}'.", name)
        )

    def _unsupported(self, name: str, hint: str = "") -> Rejected:
        message = f"Unsupported parameter: '{name}' is not supported with this model.{hint}"
        return Rejected(self._error(400, "invalid_request_error", "unsupported_parameter", message, name))

    def _model(self, api: str, name: str) -> ModelEntry:
        """The catalogue entry of a model served today; 404 ``model_not_found`` otherwise."""
        found = self.ctx.catalogue.lookup(VENDOR, api, name)
        if found.status == "served" and found.entry is not None:
            return found.entry
        if found.status == "retired":
            message = f"The model `{name}` has been deprecated, learn more here: {DEPRECATIONS_URL}"
            raise Rejected(self._error(404, "invalid_request_error", "model_not_found", message))
        raise self._model_not_found(name)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        body: Any = None
        if request.content_type == "application/json":
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
                    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
                    "valid JSON.)",
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
        await self._admit(request, "openai.images")
        body = await self._json(request)
        self._unknown(body, IMAGE_PARAMS)
        prompt = param(body, "prompt", (str,), required=True)
        self.ctx.inject("openai.images", prompt, self._injected)
        # The SDK documents no default model any more ("Specify a model explicitly").
        model = param(body, "model", (str,), required=True)
        spec = IMAGE_FAMILIES[self._model("images", model).family]
        given = {name for name, value in body.items() if value is not None}
        for name in sorted(given & (DALL_E_ONLY if spec.gpt else GPT_IMAGE_ONLY)):
            if spec.gpt:
                raise self._unknown_parameter(name)  # what GPT image models answer for response_format
            raise self._unsupported(name)
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
        if spec is GPT_IMAGE_2 and size not in spec.sizes:
            _check_free_size(size)
        else:
            check(size in spec.sizes, "size", f"'{size}' is not one of {', '.join(repr(s) for s in spec.sizes)}")
        quality = param(body, "quality", (str,), spec.qualities[0])
        check(quality in spec.qualities, "quality", f"'{quality}' is not one of {', '.join(spec.qualities)}")
        style = param(body, "style", (str,))
        if style is not None:
            check(model == "dall-e-3", "style", "style is only supported for dall-e-3")
            check(style in ("vivid", "natural"), "style", "must be one of 'vivid', 'natural'")
        output_format = param(body, "output_format", (str,), "png")
        # The simulator draws PNG and JPEG only: webp, gif and svg are refused rather than faked.
        check(output_format in ("png", "jpeg"), "output_format", f"'{output_format}' is not served by the simulator")
        # GPT image models always answer base64 (the legacy parameter was refused above).
        response_format = "b64_json" if spec.gpt else param(body, "response_format", (str,), "url")
        check(response_format in ("url", "b64_json"), "response_format", "must be one of 'url', 'b64_json'")

        width, height = (1024, 1024) if size == "auto" else (int(x) for x in size.split("x"))
        created = int(time.time())
        expires_at = time.time() + self.ctx.url_lifetime("openai.images", IMAGE_URL_TTL_S)
        data = []
        for index in range(n):
            key = f"{prompt}|{created}|{index}|{secrets.token_hex(4)}"
            item: dict[str, Any] = {}
            if response_format == "url":
                item["url"] = self.ctx.file_url(self.ctx.signer.image_name(width, height, key), expires_at)
            else:
                item["b64_json"] = media.image_b64(width, height, key, output_format)
            if model == "dall-e-3":
                item["revised_prompt"] = f"A detailed, high-quality image of {prompt.strip()}"
            data.append(item)
        payload: dict[str, Any] = {"created": created, "data": data}
        if spec.gpt:
            text_tokens = estimate_tokens(prompt)
            output_tokens = {"low": 272, "medium": 1056, "high": 4160}.get(quality, 1056) * n
            payload.update(
                background=param(body, "background", (str,), "opaque"),
                output_format=output_format,
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
        await self._admit(request, "openai.chat")
        body = await self._json(request)
        self._unknown(body, CHAT_PARAMS, chat=True)
        messages = chat_messages(body, "empty array. Expected an array with minimum length 1")
        self.ctx.inject("openai.chat", all_text(messages), self._injected)
        model = param(body, "model", (str,), required=True)
        family = self._model("chat", model).family
        if family == "reasoning" and body.get("max_tokens") is not None:
            raise self._unsupported("max_tokens", " Use 'max_completion_tokens' instead.")
        if family != "reasoning" and body.get("reasoning_effort") is not None:
            raise self._unsupported("reasoning_effort")
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
        await self._admit(request, "openai.videos.create")
        if request.content_type == "application/json":
            form: dict[str, Any] = await self._json(request)
            self._unknown(form, VIDEO_PARAMS)
        elif request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            # multipart/form-data is what the SDK sends; file parts are read and dropped.
            posted = await request.post()
            self._unknown(dict(posted), VIDEO_PARAMS)
            form = {k: v for k, v in posted.items() if isinstance(v, str)}
        else:
            raise self._bad_body()
        prompt = param(form, "prompt", (str,), required=True)
        self.ctx.inject("openai.videos.create", prompt, self._injected)
        check(bool(prompt.strip()), "prompt", "must not be empty")
        model = param(form, "model", (str,), "sora-2")
        self._model("videos", model)
        seconds = str(param(form, "seconds", (str, int), "4"))
        check(seconds in VIDEO_SECONDS, "seconds", f"'{seconds}' is not one of {', '.join(VIDEO_SECONDS)}")
        size = param(form, "size", (str,), "720x1280")
        check(size in VIDEO_SIZES, "size", f"'{size}' is not one of {', '.join(VIDEO_SIZES)}")

        job = Job(
            id=self.ctx.jobs.unique_id(lambda: f"video_{secrets.token_hex(16)}"),
            vendor=VENDOR,
            duration_s=self.ctx.video_seconds("openai.videos.create", "openai.videos.retrieve"),
            fail=wants_video_failure(prompt),
            data={
                "model": model,
                "seconds": seconds,
                "size": size,
                "prompt": prompt,
                "assets_ttl": self.ctx.url_lifetime("openai.videos.create", VIDEO_ASSETS_TTL_S),
            },
        )
        self.ctx.jobs.add(job)
        return self._respond(self._video_view(job))

    async def retrieve_video(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/videos/{id}``, with ``openai-poll-after-ms`` while the job is not finished."""
        await self.ctx.enter(request, "openai.videos.retrieve")
        await self._admit(request, "openai.videos.retrieve")
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
        await self._admit(request, "openai.videos.content")
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
        expires_at = self._expires_at(job)
        if expires_at is not None and time.time() >= expires_at:
            message = f"The assets of video '{job.id}' expired at {expires_at} and can no longer be downloaded."
            raise Rejected(self._error(404, "invalid_request_error", None, message))
        if variant == "video":
            return web.Response(body=media.mp4_bytes(), content_type="video/mp4", headers=self._headers())
        width, height = (int(x) for x in job.data["size"].split("x"))
        # Thumbnails are served as PNG (the real service sends WebP/JPEG); only the video is byte-faithful.
        body = media.png_bytes(width // 4, height // 4, *media.colours_for(job.data["prompt"]))
        return web.Response(body=body, content_type="image/png", headers=self._headers())

    async def list_videos(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/videos?after&limit&order``: a cursor page of videos, newest first by default."""
        await self.ctx.enter(request, "openai.videos.list")
        await self._admit(request, "openai.videos.list")
        self.ctx.inject("openai.videos.list", None, self._injected)
        for name in request.query:
            if name not in ("after", "limit", "order"):
                raise self._unknown_parameter(name)
        raw_limit = request.query.get("limit", "20")
        check(raw_limit.isdigit() and 1 <= int(raw_limit) <= 100, "limit", "expected an integer between 1 and 100")
        order = request.query.get("order", "desc")
        check(order in ("asc", "desc"), "order", "must be one of 'asc', 'desc'")
        jobs = self.ctx.jobs.of_vendor(VENDOR)  # newest first
        if order == "asc":
            jobs.reverse()
        after = request.query.get("after")
        if after:
            ids = [job.id for job in jobs]
            check(after in ids, "after", f"no video with id '{after}'")
            jobs = jobs[ids.index(after) + 1 :]
        page = jobs[: int(raw_limit)]
        data = [self._video_view(job) for job in page]
        payload = {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(jobs) > len(page),
        }
        return self._respond(payload)

    async def delete_video(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/videos/{id}``: a completed or failed video and its assets; a running one is refused."""
        await self.ctx.enter(request, "openai.videos.delete")
        await self._admit(request, "openai.videos.delete")
        self.ctx.inject("openai.videos.delete", None, self._injected)
        job = self._job(request)
        status = self._video_view(job)["status"]
        if status not in ("completed", "failed"):
            message = f"Video '{job.id}' is {status}: only a completed or failed video can be deleted."
            raise Rejected(self._error(400, "invalid_request_error", None, message))
        self.ctx.jobs.remove(job.id)
        return self._respond({"id": job.id, "object": "video.deleted", "deleted": True})

    def _bad_body(self) -> Rejected:
        return Rejected(
            self._error(
                400,
                "invalid_request_error",
                None,
                "We could not parse the body of your request: expected multipart/form-data or application/json.",
            )
        )

    @staticmethod
    def _expires_at(job: Job) -> int | None:
        """When a completed video's assets expire (unix seconds); None until it completes."""
        if job.phase() is not Phase.SUCCEEDED:
            return None
        return int(job.created_wall + job.duration_s + job.data["assets_ttl"])

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
            "expires_at": self._expires_at(job),
            "size": job.data["size"],
            "seconds": job.data["seconds"],
            "prompt": job.data["prompt"],
            "remixed_from_video_id": None,
            "error": error,
        }


def _check_free_size(size: str) -> None:
    """gpt-image-2 / 2.5 sizes: WIDTHxHEIGHT, both multiples of 16, aspect 1:3 .. 3:1, at most 3840x2160 pixels."""
    match = _WXH.match(size)
    check(match is not None, "size", f"'{size}' is not 'auto' or WIDTHxHEIGHT")
    assert match is not None
    width, height = int(match.group(1)), int(match.group(2))
    check(width % 16 == 0 and height % 16 == 0, "size", "width and height must both be divisible by 16")
    check(max(width, height) <= 3 * min(width, height), "size", "the aspect ratio must be between 1:3 and 3:1")
    check(width * height <= MAX_PIXELS and max(width, height) <= 3840, "size", "at most 3840x2160")
