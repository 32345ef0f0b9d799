"""Jimeng calls on the Volcengine visual API through the official `volcengine` SDK.

The SDK is synchronous (requests) and raises a bare Exception whose text is the
bytes repr of the error body, so calls run in a thread and errors are parsed
back into the vendor's code.
"""

from __future__ import annotations

import ast
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from requests.adapters import HTTPAdapter
from volcengine.visual.VisualService import VisualService

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.provider import UpstreamError

SUCCESS = 10000
# Business codes the vendor documents as worth retrying (rate, concurrency, internal errors).
RETRYABLE_BUSINESS_CODES = {
    50429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    50430: grpc.StatusCode.RESOURCE_EXHAUSTED,
    50500: grpc.StatusCode.UNAVAILABLE,
    50501: grpc.StatusCode.UNAVAILABLE,
    50511: grpc.StatusCode.UNAVAILABLE,
    50519: grpc.StatusCode.UNAVAILABLE,
}
# Moderation refusals of a job's output: a poll of that job gets the same answer however often it asks, even
# where a new submit might pass (50511, 50519), so when a poll gets one the job is over.
REFUSED_OUTPUT_CODES = frozenset({50411, 50412, 50413, 50511, 50512, 50518, 50519, 50520, 50521, 50522})
# Gateway (ResponseMetadata.Error.Code) failures.
GATEWAY_CODES = {
    "InvalidAccessKey": grpc.StatusCode.UNAUTHENTICATED,
    "SignatureDoesNotMatch": grpc.StatusCode.UNAUTHENTICATED,
    "AccessDenied": grpc.StatusCode.PERMISSION_DENIED,
    "InternalError": grpc.StatusCode.UNAVAILABLE,
    "InternalServiceTimeout": grpc.StatusCode.UNAVAILABLE,
}
RUNNING_STATES = {"in_queue", "generating"}


class VisualClient:
    """Jimeng image (CVProcess) and video (CVSync2Async submit / get result)."""

    def __init__(self, url: str, access_key: str, secret_key: str, timeout: float, concurrency: int) -> None:
        endpoint = urlsplit(url)
        # The SDK blocks a thread per call; asyncio's default pool (cores + 4) would cap
        # this provider at a handful of concurrent upstream calls.
        self.executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="visual")
        # VisualService is a process-wide singleton whose __init__ resets host and keys:
        # configure it once, here, after constructing it.
        self.service = VisualService()
        self.service.set_host(endpoint.netloc)
        self.service.set_scheme(endpoint.scheme)
        self.service.set_ak(access_key)
        self.service.set_sk(secret_key)
        self.service.set_connection_timeout(timeout)
        self.service.set_socket_timeout(timeout)
        # requests keeps 10 connections per host by default: with more threads than that, every call past
        # the tenth opened a connection and threw it away after.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency)
        for scheme in ("http://", "https://"):
            self.service.session.mount(scheme, adapter)

    async def generate_image(self, request: pb.GenerationInput) -> pb.GenerateResponse:
        """CVProcess: one image, URL or base64."""
        width, height = (int(part) for part in request.size.split("x"))
        want_url = request.response_format != "b64_json"
        data = await self._call(
            self.service.cv_process,
            {
                "req_key": request.model,
                "prompt": request.prompt,
                "seed": request.seed if request.HasField("seed") else -1,
                "width": width,
                "height": height,
                "return_url": want_url,
                "logo_info": {"add_logo": False},
            },
        )
        urls = data.get("image_urls") or []
        images = data.get("binary_data_base64") or []
        return pb.GenerateResponse(
            image_url=urls[0] if want_url and urls else "",
            image_base64=images[0] if not want_url and images else "",
            revised_prompt=data.get("rephraser_result") or "",
        )

    async def submit_video(self, request: pb.GenerationInput) -> str:
        """CVSync2AsyncSubmitTask; returns the upstream task id."""
        data = await self._call(
            self.service.cv_sync2async_submit_task,
            {
                "req_key": request.model,
                "prompt": request.prompt,
                "seed": request.seed if request.HasField("seed") else -1,
                "aspect_ratio": request.aspect_ratio or "16:9",
            },
        )
        return str(data["task_id"])

    async def poll_video(self, model: str, upstream_job_id: str) -> pb.PollJobResponse:
        """CVSync2AsyncGetResult, mapped onto the provider contract's job states."""
        try:
            data = await self._call(
                self.service.cv_sync2async_get_result,
                {"req_key": model, "task_id": upstream_job_id, "req_json": json.dumps({"return_url": True})},
            )
        except BusinessError as error:
            if error.business_code in REFUSED_OUTPUT_CODES:
                return pb.PollJobResponse(state=pb.JOB_STATE_FAILED, error_message=error.message)
            raise
        status = data.get("status")
        if status in RUNNING_STATES:
            return pb.PollJobResponse(state=pb.JOB_STATE_RUNNING)
        if status == "done" and data.get("video_url"):
            return pb.PollJobResponse(state=pb.JOB_STATE_SUCCEEDED, video_url=data["video_url"], progress=100)
        return pb.PollJobResponse(state=pb.JOB_STATE_FAILED, error_message=f"jimeng: video job {status}")

    async def _call(self, method: Any, form: dict[str, Any]) -> dict[str, Any]:
        try:
            body = await asyncio.get_running_loop().run_in_executor(self.executor, method, form)
        except Exception as error:  # noqa: BLE001 - the SDK raises only bare Exception
            raise _upstream_error(str(error)) from error
        if body.get("code") != SUCCESS:
            raise _business_error(body)
        return body.get("data") or {}


@dataclass
class BusinessError(UpstreamError):
    """A failure the visual API reports in its `code`/`message` envelope, with that code."""

    business_code: int = 0


def _business_error(body: dict[str, Any]) -> BusinessError:
    code = int(body.get("code") or 0)
    message = f"jimeng {code}: {body.get('message')}"
    return BusinessError(RETRYABLE_BUSINESS_CODES.get(code, grpc.StatusCode.INVALID_ARGUMENT), message, None, code)


def _upstream_error(text: str) -> UpstreamError:
    """Recover the vendor's error from the SDK's exception text (the body's bytes repr)."""
    try:
        body = json.loads(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError):
        code = grpc.StatusCode.DEADLINE_EXCEEDED if "timed out" in text.lower() else grpc.StatusCode.UNAVAILABLE
        return UpstreamError(code, f"jimeng: {text[:300]}")
    gateway_error = (body.get("ResponseMetadata") or {}).get("Error")
    if gateway_error:
        code = GATEWAY_CODES.get(gateway_error.get("Code"), grpc.StatusCode.INVALID_ARGUMENT)
        return UpstreamError(code, f"jimeng {gateway_error.get('Code')}: {gateway_error.get('Message')}")
    return _business_error(body)
