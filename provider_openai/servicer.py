"""ProviderService for OpenAI: images and chat via Generate, Sora videos via SubmitJob/PollJob."""

from __future__ import annotations

from typing import Any

import grpc
import openai
from openai import AsyncOpenAI

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.provider import OpenAIShapedSdk, ProviderServicer, UpstreamError
from provider_openai.settings import OpenAISettings

# How the OpenAI SDK fails, for the mapping every OpenAI-shaped provider shares.
OPENAI = OpenAIShapedSdk("openai", openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError)

# Sora takes a resolution, clients an aspect ratio.
VIDEO_SIZES = {"16:9": "1280x720", "9:16": "720x1280"}
RUNNING_STATES = {"queued", "in_progress"}


class OpenAIServicer(ProviderServicer):
    """Calls the OpenAI API; SDK retries are off because the dispatcher owns retries."""

    def __init__(self, catalogue: pb.DescribeCatalogueResponse, settings: OpenAISettings) -> None:
        super().__init__(catalogue, settings.ai_timeout)
        self.base_url = settings.openai_base_url.rstrip("/")
        self.client = AsyncOpenAI(
            api_key=settings.openai_api_key or "unset",
            base_url=self.base_url,
            timeout=settings.ai_timeout,
            max_retries=0,
        )

    def output_headers(self, url: str) -> dict[str, str]:
        """A video's content endpoint needs our key: sent only to OpenAI's own base URL."""
        if url.startswith(f"{self.base_url}/"):
            return {"Authorization": f"Bearer {self.client.api_key}"}
        return {}

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        model, upstream = await self.upstream_input(request.input, context)
        if model.upstream_api not in ("openai.images", "openai.chat"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{model.name} is not a synchronous model")
        try:
            if model.upstream_api == "openai.images":
                return await self._image(upstream, model)
            return await OPENAI.chat(self._chat_create, upstream)
        except UpstreamError as error:
            await self.fail(context, error)

    def _chat_create(self, **options: Any) -> Any:
        """`chat.completions.create` with `max_completion_tokens` for `max_tokens`: OpenAI deprecated
        `max_tokens`, every chat model takes its successor, and reasoning models (gpt-5.x, o-series) refuse it."""
        if "max_tokens" in options:
            options["max_completion_tokens"] = options.pop("max_tokens")
        return self.client.chat.completions.create(**options)

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.SubmitJobResponse:
        _, upstream = await self.upstream_input(request.input, context)
        try:
            video = await OPENAI.call(
                self.client.videos.create(
                    model=upstream.model,
                    prompt=upstream.prompt,
                    size=VIDEO_SIZES.get(upstream.aspect_ratio, "1280x720"),  # type: ignore[arg-type]
                )
            )
        except UpstreamError as error:
            await self.fail(context, error)
        return pb.SubmitJobResponse(upstream_job_id=video.id)

    async def PollJob(self, request: pb.PollJobRequest, context: grpc.aio.ServicerContext) -> pb.PollJobResponse:
        await self.model(request.model, context)
        try:
            video = await OPENAI.call(self.client.videos.retrieve(request.upstream_job_id))
        except UpstreamError as error:
            await self.fail(context, error)
        if video.status in RUNNING_STATES:
            return pb.PollJobResponse(state=pb.JOB_STATE_RUNNING, progress=video.progress or 0)
        if video.status == "completed":
            # The content endpoint needs the API key: callers fetch it server-side.
            url = f"{self.base_url}/videos/{video.id}/content"
            return pb.PollJobResponse(state=pb.JOB_STATE_SUCCEEDED, video_url=url, progress=100)
        reason = video.error.message if video.error else video.status
        return pb.PollJobResponse(state=pb.JOB_STATE_FAILED, error_message=f"openai: {reason}")

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        """`videos.delete`: the Videos API has no cancel, and deletes a video (with its assets) only once it is
        completed or failed. A running one is refused with FAILED_PRECONDITION, so the caller tries again later."""
        await self.model(request.model, context)
        video_id = request.upstream_job_id
        try:
            await self.client.videos.delete(video_id)
        except openai.NotFoundError:
            return pb.CancelJobResponse(cancelled=True, detail=f"openai: video {video_id} is already gone")
        except openai.BadRequestError as error:
            message = OPENAI.upstream_error(error) or error
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"openai deletes only a completed or failed video; try again once it has finished ({message})",
            )
        except (openai.APIStatusError, openai.APIConnectionError) as error:
            upstream = OPENAI.upstream_error(error)
            if upstream is None:  # pragma: no cover - both classes are mapped
                raise
            await self.fail(context, upstream)
        return pb.CancelJobResponse(cancelled=True, detail=f"openai: video {video_id} and its assets deleted")

    async def _image(self, request: pb.GenerationInput, model: pb.Model) -> pb.GenerateResponse:
        options: dict[str, Any] = {"model": request.model, "prompt": request.prompt, "n": 1}
        if request.size:
            options["size"] = request.size
        # GPT image models reject response_format: they always answer base64.
        if len(model.response_formats) > 1:
            options["response_format"] = request.response_format or "url"
        response = await OPENAI.call(self.client.images.generate(**options))
        image = response.data[0]
        return pb.GenerateResponse(
            image_url=image.url or "", image_base64=image.b64_json or "", revised_prompt=image.revised_prompt or ""
        )
