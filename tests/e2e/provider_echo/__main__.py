"""`python -m provider_echo`: a provider whose "vendor" echoes the prompt."""

from pathlib import Path

import grpc
from pydantic import Field

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.provider import ProviderServicer, ProviderSettings, run_provider


class EchoSettings(ProviderSettings):
    """Environment of `python -m provider_echo`."""

    port: int = Field(default=50063, ge=0, le=65535)
    """Port of the provider's gRPC server."""


class EchoServicer(ProviderServicer):
    """Generate answers at once; a vendor with slow jobs implements SubmitJob and PollJob instead."""

    def __init__(self, catalogue: pb.DescribeCatalogueResponse, settings: EchoSettings) -> None:
        super().__init__(catalogue)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        _, upstream = await self.upstream_input(request.input, context)
        words = len(upstream.prompt.split())
        return pb.GenerateResponse(
            text_result=f"echo: {upstream.prompt}",
            prompt_tokens=words,
            completion_tokens=words + 1,
            total_tokens=2 * words + 1,
        )


run_provider("provider_echo", EchoSettings, EchoServicer, Path(__file__).with_name("catalogue.toml"))
