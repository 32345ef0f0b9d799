"""Volcengine visual API (即梦 / Jimeng): ``POST /?Action=…&Version=2022-08-31``.

Wire format per upstream_apis.md §2: every request is signed with Volcengine
V4 HMAC-SHA256 (verified here against the configured AK/SK; failures get the
gateway's ``ResponseMetadata`` error shape), bodies are JSON, and results use
the business envelope ``{"code", "message", "data", "request_id", "status",
"time_elapsed"}`` with HTTP 200 / code 10000 on success and HTTP 400/429/500
with the error code otherwise.

As strict as the vendor:

* The V4 check (``verify_signature``) also refuses an ``X-Content-Sha256``
  that is not the SHA-256 of the body, a ``SignedHeaders`` without ``host``
  and ``x-date``, and a credential scope other than ``<AK>/<date of
  X-Date>/cn-north-1/cv/request`` (``SignatureDoesNotMatch``, 401).
* ``req_key`` must be one ``catalogue.toml`` lists for the action (else 50200).
* Limits are counted per access key: over ``rate_limit`` per ``rate_window_s``
  is HTTP 429 code 50429, over ``concurrency_limit`` HTTP 429 code 50430 (no
  ``Retry-After``: upstream_apis.md §2.6/2.7 documents none). The visual API
  documents no quota answer, so ``quota_exhausted`` cannot be set here.
* There is **no cancel**: a ``jimeng_vgfm_t2v_l20`` job, once submitted, runs
  to its end and is paid for; ``CVSync2AsyncGetResult`` is the only call on
  it. (The SDK's ``cv_cancel_task`` is ``CVCancelTask`` of another API family,
  Version 2024-06-06; the simulator answers it, like any action it does not
  serve, with the gateway's 404 ``InvalidActionOrVersion``.)
* Media links (images with ``return_url``, finished videos) expire 1 h after
  they are issued (⚠ the 1 h is a 3P figure; ``url_lifetime_s`` shortens it).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote

from aiohttp import web

from upstream_simulator import media
from upstream_simulator.context import InvalidParam, Refusal, SimContext, check, param
from upstream_simulator.faults import Injection, retry_after_headers, wants_video_failure
from upstream_simulator.jobs import Job, Phase

VERSION = "2022-08-31"
VENDOR = "visual"
REGION, SERVICE = "cn-north-1", "cv"
URL_TTL_S = 3600  # ⚠ 3P: "the video URL is valid for 1 h"
ACTIONS = {
    "CVProcess": "visual.CVProcess",
    "CVSync2AsyncSubmitTask": "visual.CVSync2AsyncSubmitTask",
    "CVSync2AsyncGetResult": "visual.CVSync2AsyncGetResult",
}
IMAGE_SIDE_MIN, IMAGE_SIDE_MAX = 256, 768
ASPECT_RATIOS = {"16:9": (1280, 720), "4:3": (960, 720), "1:1": (720, 720), "3:4": (720, 960),
                 "9:16": (720, 1280), "21:9": (1680, 720), "9:21": (720, 1680)}  # fmt: skip
# When the request arrived, for the envelope's "time_elapsed".
_STARTED = web.RequestKey("upstream_simulator.visual_started", float)
# Allowed clock skew of X-Date (the real tolerance is not documented; 15 min is the common gateway value).
MAX_SKEW_S = 15 * 60

SUCCESS = 10000
PARAM_ERROR, MISSING_PARAM, PARAM_TYPE_ERROR = 50200, 50201, 50204
# Injected business errors per HTTP status: (code, message).
_INJECTED: dict[int, tuple[int, str]] = {
    400: (50413, "Post Text Risk Not Pass"),
    429: (50429, "Request Has Reached API Limit, Please Try Later"),
    500: (50500, "Internal Error"),
}
VIDEO_FAILURE = (50511, "Post Img Risk Not Pass")
# Gateway (ResponseMetadata) errors: name -> (CodeN, HTTP status, message).
_GATEWAY: dict[str, tuple[int, int, str]] = {
    "MissingRequestInfo": (100004, 400, "The request is missing authentication information (Authorization, X-Date)."),
    "InvalidTimestamp": (100006, 400, "The request timestamp X-Date is invalid or expired."),
    "InvalidActionOrVersion": (100008, 404, "Could not find operation for the given Action and Version."),
    "InvalidAccessKey": (100009, 401, "The AccessKeyId you provided does not exist in our records."),
    "SignatureDoesNotMatch": (
        100010,
        401,
        "The request signature we calculated does not match the signature you provided. "
        "Check your Secret Access Key and signing method. Consult the service documentation for details.",
    ),
    "AccessDenied": (100013, 403, "Access Denied."),
}


def _request_id() -> str:
    """A Volcengine-style request id: timestamp plus random hex."""
    return time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(9).upper()


def verify_signature(
    method: str, path: str, raw_query: str, headers: dict[str, str], body: bytes, access_key: str, secret_key: str
) -> str | None:
    """Check a Volcengine V4 signature (upstream_apis.md §2.3); return an error name or None if valid.

    ``headers`` must have lowercase names.
    """
    authorization = headers.get("authorization", "")
    x_date = headers.get("x-date", "")
    if not authorization or not x_date:
        return "MissingRequestInfo"
    try:
        algorithm, rest = authorization.split(" ", 1)
        parts = dict(item.strip().split("=", 1) for item in rest.split(","))
        credential, signed_names, signature = parts["Credential"], parts["SignedHeaders"], parts["Signature"]
    except (ValueError, KeyError):
        return "SignatureDoesNotMatch"
    if algorithm != "HMAC-SHA256":
        return "SignatureDoesNotMatch"
    try:
        signed_at = calendar.timegm(time.strptime(x_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return "InvalidTimestamp"
    if abs(time.time() - signed_at) > MAX_SKEW_S:
        return "InvalidTimestamp"
    if not hmac.compare_digest(credential.split("/", 1)[0].encode(), access_key.encode()):
        return "InvalidAccessKey"
    if credential != f"{access_key}/{x_date[:8]}/{REGION}/{SERVICE}/request":
        return "SignatureDoesNotMatch"

    signed = signed_names.split(";")
    # The host and the time must be signed, or a signature could be replayed elsewhere or later.
    if any(name not in headers for name in signed) or not {"host", "x-date"} <= set(signed):
        return "SignatureDoesNotMatch"
    body_hash = hashlib.sha256(body).hexdigest()
    claimed = headers.get("x-content-sha256")
    if claimed is not None and not hmac.compare_digest(claimed.lower(), body_hash):
        return "SignatureDoesNotMatch"

    def header_value(name: str) -> str:
        # The signer drops a default port from Host before signing.
        value = headers[name]
        if name == "host" and value.rsplit(":", 1)[-1] in ("80", "443"):
            return value.rsplit(":", 1)[0]
        return value

    query = sorted(parse_qsl(raw_query, keep_blank_values=True))
    canonical_query = "&".join(quote(k, safe="-_.~") + "=" + quote(v, safe="-_.~") for k, v in query)
    canonical = "\n".join(
        [
            method,
            quote(path or "/").replace("%2F", "/"),
            canonical_query,
            "".join(f"{name}:{header_value(name)}\n" for name in signed),
            ";".join(signed),
            body_hash,
        ]
    )
    date = x_date[:8]
    string_to_sign = "\n".join(
        ["HMAC-SHA256", x_date, f"{date}/{REGION}/{SERVICE}/request", hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = hmac.new(secret_key.encode(), date.encode(), hashlib.sha256).digest()
    for part in (REGION, SERVICE, "request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(expected, signature) else "SignatureDoesNotMatch"


class VisualAPI:
    """The visual-API handlers bound to one simulator context."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        """aiohttp route table: one path, dispatched on the ``Action`` query parameter."""
        return [web.post("/", self.dispatch)]

    # ----------------------------------------------------------------- wire helpers

    def _envelope(
        self,
        request: web.Request,
        code: int,
        message: str,
        data: Any,
        http_status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """The business envelope every visual result uses."""
        request_id = _request_id()
        elapsed_ms = (time.monotonic() - request[_STARTED]) * 1000
        payload = {
            "code": code,
            "data": data,
            "message": message,
            "request_id": request_id,
            "status": code,
            "time_elapsed": f"{elapsed_ms:.6f}ms",
        }
        return web.json_response(payload, status=http_status, headers={"X-Tt-Logid": request_id, **(headers or {})})

    def _gateway_error(self, request: web.Request, name: str) -> web.Response:
        """The API gateway's ``ResponseMetadata`` error (auth, unknown action)."""
        code_n, status, message = _GATEWAY[name]
        request_id = _request_id()
        payload = {
            "ResponseMetadata": {
                "RequestId": request_id,
                "Action": request.query.get("Action", ""),
                "Version": request.query.get("Version", ""),
                "Service": SERVICE,
                "Region": REGION,
                "Error": {"CodeN": code_n, "Code": name, "Message": message},
            }
        }
        return web.json_response(payload, status=status, headers={"X-Tt-Logid": request_id})

    def _injected(self, request: web.Request) -> Callable[[Injection], web.Response]:
        def render(injection: Injection) -> web.Response:
            status = injection.status
            if status == 401:
                return self._gateway_error(request, "InvalidAccessKey")
            if status == 403:
                return self._gateway_error(request, "AccessDenied")
            if status in _INJECTED:
                code, message = _INJECTED[status]
            elif status >= 500:
                code, message = 50501, "Internal RPC Error"
            else:
                code, message = PARAM_ERROR, "Request Invalid Params"
            return self._envelope(request, code, message, None, status, retry_after_headers(injection))

        return render

    def _limited(self, request: web.Request) -> Callable[[Refusal, int], web.Response]:
        def render(refusal: Refusal, limit: int) -> web.Response:
            if refusal == "concurrency":
                return self._envelope(
                    request, 50430, "Request Has Reached API Concurrent Limit, Please Try Later", None, 429
                )
            return self._envelope(request, 50429, "Request Has Reached API Limit, Please Try Later", None, 429)

        return render

    def _req_key(self, form: dict[str, Any], api: str) -> str:
        req_key: str = param(form, "req_key", (str,), required=True)
        found = self.ctx.catalogue.lookup(VENDOR, api, req_key)
        check(found.status == "served", "req_key", f"unsupported req_key {req_key}")
        return req_key

    def _invalid(self, request: web.Request, exc: InvalidParam) -> web.Response:
        code = {"missing": MISSING_PARAM, "type": PARAM_TYPE_ERROR}.get(exc.reason, PARAM_ERROR)
        return self._envelope(request, code, f"Invalid Parameter: {exc.param}: {exc.message}", None, 400)

    # ----------------------------------------------------------------- dispatch

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route on ``Action``/``Version``, verify the signature, then run the action."""
        request[_STARTED] = time.monotonic()
        endpoint = ACTIONS.get(request.query.get("Action", ""))
        if endpoint is None or request.query.get("Version") != VERSION:
            return self._gateway_error(request, "InvalidActionOrVersion")
        await self.ctx.enter(request, endpoint)
        raw = await request.read()
        settings = self.ctx.settings
        problem = verify_signature(
            request.method,
            request.path,
            request.rel_url.raw_query_string,
            {k.lower(): v for k, v in request.headers.items()},
            raw,
            settings.volc_access_key,
            settings.volc_secret_key,
        )
        if problem is not None:
            return self._gateway_error(request, problem)
        await self.ctx.admit(request, endpoint, settings.volc_access_key, self._limited(request))
        try:
            form = json.loads(raw)
        except ValueError:
            form = None
        try:
            if not isinstance(form, dict):
                raise InvalidParam("body", "the request body must be a JSON object")
            prompt = form.get("prompt") if isinstance(form.get("prompt"), str) else None
            self.ctx.inject(endpoint, prompt, self._injected(request))
            if endpoint == "visual.CVProcess":
                return self._cv_process(request, form)
            if endpoint == "visual.CVSync2AsyncSubmitTask":
                return self._submit(request, form)
            return self._get_result(request, form)
        except InvalidParam as exc:
            return self._invalid(request, exc)

    # ----------------------------------------------------------------- actions

    def _cv_process(self, request: web.Request, form: dict[str, Any]) -> web.Response:
        """CVProcess with req_key jimeng_high_aes_general_v21_L: synchronous text-to-image."""
        self._req_key(form, "CVProcess")
        prompt = param(form, "prompt", (str,), required=True)
        check(bool(prompt.strip()), "prompt", "must not be empty")
        width = param(form, "width", (int,), 512)
        height = param(form, "height", (int,), 512)
        for name, value in (("width", width), ("height", height)):
            check(
                IMAGE_SIDE_MIN <= value <= IMAGE_SIDE_MAX, name, f"must be within [{IMAGE_SIDE_MIN}, {IMAGE_SIDE_MAX}]"
            )
        seed = param(form, "seed", (int,), -1)
        use_sr = param(form, "use_sr", (bool,), True)
        use_pre_llm = param(form, "use_pre_llm", (bool,), True)
        return_url = param(form, "return_url", (bool,), False)
        param(form, "logo_info", (dict,))

        # Super-resolution doubles the output size.
        out_w, out_h = (width * 2, height * 2) if use_sr else (width, height)
        key = f"{prompt}|{seed if seed >= 0 else random.randint(0, 2**31 - 1)}"
        name = self.ctx.signer.image_name(out_w, out_h, key)
        expires_at = time.time() + self.ctx.url_lifetime("visual.CVProcess", URL_TTL_S)
        request_id = _request_id()
        data = {
            "algorithm_base_resp": {"status_code": 0, "status_message": "Success"},
            "binary_data_base64": [media.image_b64(out_w, out_h, key)],
            "image_urls": [self.ctx.file_url(name, expires_at)] if return_url else None,
            "llm_result": "",
            "pe_result": "",
            "predict_tags_result": "",
            "rephraser_result": f"{prompt}, highly detailed, cinematic lighting" if use_pre_llm else prompt,
            "request_id": request_id,
            "vlm_result": "",
        }
        return self._envelope(request, SUCCESS, "Success", data)

    def _submit(self, request: web.Request, form: dict[str, Any]) -> web.Response:
        """CVSync2AsyncSubmitTask with req_key jimeng_vgfm_t2v_l20: starts a video job."""
        req_key = self._req_key(form, "CVSync2Async")
        prompt = param(form, "prompt", (str,), required=True)
        check(bool(prompt.strip()), "prompt", "must not be empty")
        param(form, "seed", (int,), -1)
        aspect_ratio = param(form, "aspect_ratio", (str,), "16:9")
        check(aspect_ratio in ASPECT_RATIOS, "aspect_ratio", f"must be one of {', '.join(ASPECT_RATIOS)}")
        # 19-digit numeric ids like the real ones.
        task_id = self.ctx.jobs.unique_id(lambda: str(random.randint(7 * 10**18, 8 * 10**18 - 1)))
        job = Job(
            id=task_id,
            vendor=VENDOR,
            duration_s=self.ctx.video_seconds("visual.CVSync2AsyncSubmitTask", "visual.CVSync2AsyncGetResult"),
            fail=wants_video_failure(prompt),
            data={
                "req_key": req_key,
                "video": self.ctx.signer.video_name(),
                "aspect_ratio": aspect_ratio,
                "url_ttl": self.ctx.url_lifetime("visual.CVSync2AsyncSubmitTask", URL_TTL_S),
            },
        )
        self.ctx.jobs.add(job)
        return self._envelope(request, SUCCESS, "Success", {"task_id": task_id})

    def _get_result(self, request: web.Request, form: dict[str, Any]) -> web.Response:
        """CVSync2AsyncGetResult: in_queue → generating → done; unknown ids are not_found."""
        self._req_key(form, "CVSync2Async")
        task_id = param(form, "task_id", (str,), required=True)
        req_json = param(form, "req_json", (str,))
        if req_json:
            try:
                options = json.loads(req_json)
            except ValueError as exc:
                raise InvalidParam("req_json", "must be a JSON string") from exc
            check(isinstance(options, dict), "req_json", "must encode a JSON object")

        job = self.ctx.jobs.get(task_id, VENDOR)
        result: dict[str, Any] = {"binary_data_base64": None, "image_urls": None, "resp_data": "", "video_url": ""}
        if job is None:
            return self._envelope(request, SUCCESS, "Success", {**result, "status": "not_found"})
        phase = job.phase()
        if phase is Phase.QUEUED:
            return self._envelope(request, SUCCESS, "Success", {**result, "status": "in_queue"})
        if phase is Phase.RUNNING:
            return self._envelope(request, SUCCESS, "Success", {**result, "status": "generating"})
        if phase is Phase.FAILED:
            # A finished-but-failed task reports its error in the outer code, with data null.
            code, message = VIDEO_FAILURE
            return self._envelope(request, code, message, None, 400)
        url = self.ctx.file_url(job.data["video"], job.created_wall + job.duration_s + job.data["url_ttl"])
        result.update(status="done", video_url=url, resp_data=json.dumps({"urls": [url]}))
        return self._envelope(request, SUCCESS, "Success", result)
