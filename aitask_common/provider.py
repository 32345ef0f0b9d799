"""What every provider package shares: settings, the catalogue, error mapping, serving and registration,
and the calls through OpenAI-shaped vendor SDKs (OpenAI's and Ark's): their errors and the chat call.

A provider package supplies its catalogue file and the upstream calls; this
module turns them into an aitask.provider.v1.ProviderService server that
registers itself in Redis while it runs.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar, cast

import grpc
import httpx
from google.protobuf import json_format
from pydantic import Field

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask.provider.v1 import provider_service_pb2_grpc
from aitask_common.grpc_server import GrpcServer, run_until_signalled
from aitask_common.logging import configure_logging, get_logger
from aitask_common.metrics import serve_metrics
from aitask_common.provider_errors import RETRY_AFTER_METADATA, UPSTREAM_ERROR_METADATA
from aitask_common.provider_keys import available_models
from aitask_common.redis_clients import async_redis_client
from aitask_common.registry import RegistryPublisher
from aitask_common.settings import ServiceSettings, load_settings
from aitask_common.tracing import configure_tracing

log = get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ProviderService"].full_name


class ProviderSettings(ServiceSettings):
    """Settings every provider process shares."""

    host: str = "127.0.0.1"
    """Address the provider's gRPC server binds."""
    port: int = Field(default=0, ge=0, le=65535)
    """Port of the provider's gRPC server."""
    advertise_host: str = ""
    """Host the dispatcher should dial; defaults to HOST (set it to the pod IP in Kubernetes)."""
    registry_ttl_seconds: float = Field(default=6.0, gt=0)
    """An instance that misses heartbeats for this long drops out of the registry."""


SettingsT = TypeVar("SettingsT", bound=ProviderSettings)
T = TypeVar("T")


def load_catalogue(path: Path) -> pb.DescribeCatalogueResponse:
    """Read a provider's catalogue TOML file into the catalogue message."""
    with path.open("rb") as source:
        return json_format.ParseDict(tomllib.load(source), pb.DescribeCatalogueResponse())


@dataclass
class UpstreamError(Exception):
    """An upstream call failed; `code` says whether it is final or retryable."""

    code: grpc.StatusCode
    message: str
    retry_after_seconds: float | None = None

    def __str__(self) -> str:
        return self.message


class ProviderServicer(provider_service_pb2_grpc.ProviderServiceServicer):
    """Catalogue lookups and error reporting; subclasses implement the upstream calls."""

    def __init__(self, catalogue: pb.DescribeCatalogueResponse, fetch_timeout: float = 120.0) -> None:
        self.catalogue = catalogue
        self.models = {model.name: model for model in catalogue.models}
        # Output downloads (FetchOutput): redirects are followed by hand, each checked (aitask_common.output_fetch).
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(fetch_timeout), follow_redirects=False)

    def output_headers(self, url: str) -> dict[str, str]:
        """Headers a download of `url` needs: none, unless the vendor's content endpoint wants its key."""
        return {}

    async def FetchOutput(
        self, request: pb.FetchOutputRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FetchOutputChunk]:
        from aitask_common.output_fetch import fetch_output  # it imports this module

        await self.model(request.model, context)
        try:
            async for chunk in fetch_output(
                self.http, request.url, self.output_headers(request.url), request.max_bytes
            ):
                yield chunk
        except UpstreamError as error:
            await self.fail(context, error)

    async def DescribeCatalogue(
        self, request: pb.DescribeCatalogueRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeCatalogueResponse:
        return self.catalogue

    async def model(self, name: str, context: grpc.aio.ServicerContext) -> pb.Model:
        """The catalogue entry for `name`, or abort with INVALID_ARGUMENT."""
        if name not in self.models:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"model {name!r} is not served here")
        return self.models[name]

    async def upstream_input(
        self, request: pb.GenerationInput, context: grpc.aio.ServicerContext
    ) -> tuple[pb.Model, pb.GenerationInput]:
        """The model's catalogue entry and the input as the vendor must see it (its own model name)."""
        model = await self.model(request.model, context)
        upstream = pb.GenerationInput()
        upstream.CopyFrom(request)
        upstream.model = model.upstream_model or model.name
        return model, upstream

    @staticmethod
    async def fail(context: grpc.aio.ServicerContext, error: UpstreamError) -> NoReturn:
        """Abort the RPC with the upstream's status, passing Retry-After on as metadata."""
        metadata = [(UPSTREAM_ERROR_METADATA, "1")]
        if error.retry_after_seconds is not None:
            metadata.append((RETRY_AFTER_METADATA, str(int(error.retry_after_seconds * 1000))))
        context.set_trailing_metadata(tuple(metadata))
        await context.abort(error.code, error.message)
        raise AssertionError("unreachable: abort raises")


async def serve_provider(settings: ProviderSettings, servicer: ProviderServicer) -> None:
    """Serve `servicer`, registered under its catalogue's provider name, until SIGTERM.

    The instance deregisters before draining, so the dispatcher stops picking it.
    """
    redis = async_redis_client(settings)
    # The registry lives in Redis: without it this instance cannot be found.
    server = GrpcServer(f"{settings.host}:{settings.port}", [SERVICE_NAME], redis.ping)
    provider_service_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, server.server)
    serve_metrics(settings.metrics_host, settings.metrics_port)
    address = f"{settings.advertise_host or settings.host}:{server.port}"
    publisher = RegistryPublisher(
        redis, servicer.catalogue.provider, address, servicer.catalogue, settings.registry_ttl_seconds
    )
    # Registered once Redis answers (a Redis down at start-up is waited for, live but not ready meanwhile).
    server.start_up = publisher.register
    try:
        await run_until_signalled(server, settings.shutdown_grace, server.start, on_stop=publisher.deregister)
    finally:
        await redis.aclose()


def code_for_http_status(status: int) -> grpc.StatusCode:
    """Map an upstream HTTP status to the gRPC code the dispatcher acts on."""
    if status == 401:
        return grpc.StatusCode.UNAUTHENTICATED
    if status == 403:
        return grpc.StatusCode.PERMISSION_DENIED
    if status == 429:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if status in (408, 409) or status >= 500:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INVALID_ARGUMENT


def chat_result(response: Any) -> pb.GenerateResponse:
    """The text and token usage of an OpenAI-shaped chat completion (OpenAI's and Ark's SDKs alike)."""
    usage = response.usage
    return pb.GenerateResponse(
        text_result=response.choices[0].message.content or "",
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        total_tokens=usage.total_tokens if usage else 0,
    )


class _Headers(Protocol):
    def get(self, name: str) -> str | None: ...


class _Response(Protocol):
    @property
    def headers(self) -> _Headers: ...


class _StatusError(Protocol):
    """What OpenAI's `APIStatusError` and Ark's `ArkAPIStatusError` both carry."""

    status_code: int
    code: str | None
    message: str
    body: object

    @property
    def response(self) -> _Response: ...


@dataclass(frozen=True)
class OpenAIShapedSdk:
    """A vendor SDK built like OpenAI's (Ark's is a fork of it): its name in error messages and its exceptions.

    One mapping of their failures for every provider: an HTTP error status becomes the gRPC code the
    dispatcher acts on (`code_for_http_status`) with the vendor's own message and Retry-After; a timeout
    DEADLINE_EXCEEDED; a failed connection UNAVAILABLE. (Build the clients with max_retries=0: the dispatcher
    owns retries.)
    """

    vendor: str
    status_error: type[Exception]
    timeout_error: type[Exception]
    # The SDKs' timeout error is a connection error too: the timeout is told apart first.
    connection_error: type[Exception]

    def upstream_error(self, error: Exception) -> UpstreamError | None:
        """The UpstreamError an SDK exception means, or None when it is not one of the SDK's call failures."""
        if isinstance(error, self.status_error):
            status = cast(_StatusError, error)
            # The vendor's own words when its error body has them, else what the SDK made of the answer.
            message = status.body.get("message") if isinstance(status.body, dict) else None
            detail = message if isinstance(message, str) and message else status.message
            label = f"{self.vendor} {status.status_code}" + (f" {status.code}" if status.code else "")
            return UpstreamError(
                code_for_http_status(status.status_code),
                f"{label}: {detail}",
                retry_after_seconds(status.response.headers),
            )
        if isinstance(error, self.timeout_error):
            return UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.vendor}: request timed out")
        if isinstance(error, self.connection_error):
            return UpstreamError(grpc.StatusCode.UNAVAILABLE, f"{self.vendor}: connection failed: {error}")
        return None

    async def call(self, request: Awaitable[T]) -> T:
        """Await an SDK call, turning its failures into UpstreamError with the vendor's message."""
        try:
            return await request
        except (self.status_error, self.connection_error) as error:
            upstream = self.upstream_error(error)
            if upstream is None:  # pragma: no cover - both classes are mapped above
                raise
            raise upstream from error

    async def chat(self, create: Callable[..., Awaitable[Any]], request: pb.GenerationInput) -> pb.GenerateResponse:
        """One chat completion through the SDK's `chat.completions.create`: the prompt as one user message,
        max_tokens and temperature only when the request sets them."""
        options: dict[str, Any] = {"model": request.model, "messages": [{"role": "user", "content": request.prompt}]}
        if request.HasField("max_tokens"):
            options["max_tokens"] = request.max_tokens
        if request.HasField("temperature"):
            options["temperature"] = request.temperature
        return chat_result(await self.call(create(**options)))


def retry_after_seconds(headers: Any) -> float | None:
    """An upstream's `retry-after-ms` / `Retry-After` (seconds) header, if it sent one."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP-date Retry-After: fall back to our own backoff
    return None


def run_provider(
    service: str,
    settings_class: type[SettingsT],
    servicer_class: Callable[[pb.DescribeCatalogueResponse, SettingsT], ProviderServicer],
    catalogue_path: Path,
) -> None:
    """Entry point shared by every provider package's `__main__`."""
    settings = load_settings(settings_class)
    configure_logging(service, settings)
    configure_tracing(service, settings)
    catalogue = available_models(load_catalogue(catalogue_path), settings)
    servicer = servicer_class(catalogue, settings)
    asyncio.run(serve_provider(settings, servicer))
