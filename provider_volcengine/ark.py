"""Ark (Doubao) calls through the official `volcengine-ark-runtime` SDK."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
from volcenginesdkarkruntime import AsyncArk
from volcenginesdkarkruntime._exceptions import ArkAPIConnectionError, ArkAPIStatusError, ArkAPITimeoutError

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.provider import UpstreamError, chat_result, code_for_http_status, retry_after_seconds

T = TypeVar("T")


class ArkClient:
    """Image generation and chat on Ark; SDK retries are off because the dispatcher owns retries."""

    def __init__(self, api_key: str, base_url: str, timeout: float) -> None:
        self.client = AsyncArk(api_key=api_key or "unset", base_url=base_url, timeout=timeout, max_retries=0)

    async def generate_image(self, request: pb.GenerationInput) -> pb.GenerateResponse:
        """POST /images/generations; one image, URL or base64."""
        response = await _call(
            self.client.images.generate(
                model=request.model,
                prompt=request.prompt,
                size=request.size or None,
                seed=request.seed if request.HasField("seed") else None,
                response_format=request.response_format or "url",
                watermark=False,
            )
        )
        image = response.data[0]
        error = getattr(image, "error", None)
        if error:
            raise UpstreamError(grpc.StatusCode.INVALID_ARGUMENT, f"ark: {error}")
        return pb.GenerateResponse(image_url=image.url or "", image_base64=image.b64_json or "")

    async def chat(self, request: pb.GenerationInput) -> pb.GenerateResponse:
        """POST /chat/completions with the prompt as one user message."""
        response = await _call(
            self.client.chat.completions.create(
                model=request.model,
                messages=[{"role": "user", "content": request.prompt}],
                max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
                temperature=request.temperature if request.HasField("temperature") else None,
            )
        )
        return chat_result(response)


async def _call(request: Awaitable[T]) -> T:
    """Await an SDK call, turning its exceptions into UpstreamError with the vendor's message."""
    try:
        return await request
    except ArkAPIStatusError as error:
        message = (error.body or {}).get("message") if isinstance(error.body, dict) else None
        raise UpstreamError(
            code_for_http_status(error.status_code),
            f"ark {error.status_code} {error.code or ''}: {message or error}".replace("  ", " "),
            retry_after_seconds(error.response.headers),
        ) from error
    except ArkAPITimeoutError as error:
        raise UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "ark: request timed out") from error
    except ArkAPIConnectionError as error:
        raise UpstreamError(grpc.StatusCode.UNAVAILABLE, f"ark: connection failed: {error}") from error
