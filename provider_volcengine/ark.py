"""Ark (Doubao) calls through the official `volcengine-ark-runtime` SDK."""

from __future__ import annotations

import grpc
from volcenginesdkarkruntime import AsyncArk
from volcenginesdkarkruntime._exceptions import ArkAPIConnectionError, ArkAPIStatusError, ArkAPITimeoutError

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.provider import OpenAIShapedSdk, UpstreamError

# How the Ark SDK (a fork of OpenAI's) fails, for the mapping every OpenAI-shaped provider shares.
ARK = OpenAIShapedSdk("ark", ArkAPIStatusError, ArkAPITimeoutError, ArkAPIConnectionError)


class ArkClient:
    """Image generation and chat on Ark; SDK retries are off because the dispatcher owns retries."""

    def __init__(self, api_key: str, base_url: str, timeout: float) -> None:
        self.client = AsyncArk(api_key=api_key or "unset", base_url=base_url, timeout=timeout, max_retries=0)

    async def generate_image(self, request: pb.GenerationInput) -> pb.GenerateResponse:
        """POST /images/generations; one image, URL or base64."""
        response = await ARK.call(
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
        return await ARK.chat(self.client.chat.completions.create, request)
