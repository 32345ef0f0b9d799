"""ProviderService for Volcengine: routes each model to the API its catalogue entry names."""

from __future__ import annotations

import grpc

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.provider import ProviderServicer, UpstreamError
from provider_volcengine.ark import ArkClient
from provider_volcengine.settings import VolcengineSettings
from provider_volcengine.visual import VisualClient


class VolcengineServicer(ProviderServicer):
    """Generate (Ark images, Ark chat, Jimeng images) and SubmitJob/PollJob (Jimeng video)."""

    def __init__(self, catalogue: pb.DescribeCatalogueResponse, settings: VolcengineSettings) -> None:
        super().__init__(catalogue, settings.ai_timeout)
        self.ark = ArkClient(settings.ark_api_key, settings.ark_base_url, settings.ai_timeout)
        self.visual = VisualClient(
            settings.volcengine_visual_url,
            settings.volcengine_access_key,
            settings.volcengine_secret_key,
            settings.ai_timeout,
            settings.visual_concurrency,
        )
        self.generators = {
            "ark.images": self.ark.generate_image,
            "ark.chat": self.ark.chat,
            "visual.cv_process": self.visual.generate_image,
        }

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        model, upstream = await self.upstream_input(request.input, context)
        if model.upstream_api not in self.generators:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{model.name} is not a synchronous model")
        try:
            return await self.generators[model.upstream_api](upstream)
        except UpstreamError as error:
            await self.fail(context, error)

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.SubmitJobResponse:
        model, upstream = await self.upstream_input(request.input, context)
        if model.upstream_api != "visual.async_video":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{model.name} is not an asynchronous model")
        try:
            return pb.SubmitJobResponse(upstream_job_id=await self.visual.submit_video(upstream))
        except UpstreamError as error:
            await self.fail(context, error)

    async def PollJob(self, request: pb.PollJobRequest, context: grpc.aio.ServicerContext) -> pb.PollJobResponse:
        model = await self.model(request.model, context)
        try:
            return await self.visual.poll_video(model.upstream_model or model.name, request.upstream_job_id)
        except UpstreamError as error:
            await self.fail(context, error)

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        """The visual API's CVSync2Async jobs (Jimeng video) have no cancel or delete: CVCancelTask, in the SDK,
        belongs to the other async API (CVSubmitTask / CVGetResult, version 2024-06-06). The job runs to the end;
        the gateway only stops polling it."""
        await self.model(request.model, context)
        return pb.CancelJobResponse(
            cancelled=False,
            detail="the visual API has no cancel for CVSync2Async jobs: the job was left to finish, unpolled",
        )
