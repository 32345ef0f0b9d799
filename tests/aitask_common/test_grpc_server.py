"""The shared GrpcServer, in process on 127.0.0.1 port 0: health, reflection, and the interceptors it is given."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from aitask_common.grpc_server import GrpcServer

T = TypeVar("T")
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Any]]
CHECK = "/grpc.health.v1.Health/Check"


class Recording(grpc.aio.ServerInterceptor):
    """Notes, under its name, every method it sees, in a log shared with the other interceptors."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Any:
        self.log.append((self.name, details.method))
        return await continuation(details)


class Refusing(grpc.aio.ServerInterceptor):
    """Refuses every unary call with PERMISSION_DENIED before the servicer runs."""

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused by the test interceptor")

        return grpc.unary_unary_rpc_method_handler(
            refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


def served(
    interceptors: list[grpc.aio.ServerInterceptor], scenario: Callable[[GrpcServer, grpc.aio.Channel], Awaitable[T]]
) -> T:
    """Run `scenario` against a started GrpcServer on a free loopback port, then stop it."""

    async def main() -> T:
        server = GrpcServer("127.0.0.1:0", [], interceptors=interceptors)
        assert server.port > 0
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                return await scenario(server, channel)
        finally:
            await server.stop(0)

    return asyncio.run(main())


def requests_counted(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("aitask_grpc_requests_total", {"method": method, "code": code}) or 0.0


def test_the_interceptors_given_see_every_call_in_their_order() -> None:
    log: list[tuple[str, str]] = []

    async def scenario(server: GrpcServer, channel: grpc.aio.Channel) -> health_pb2.HealthCheckResponse:
        return await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    before = requests_counted("Check", "OK")
    answer = served([Recording("first", log), Recording("second", log)], scenario)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert log == [("first", CHECK), ("second", CHECK)]
    # The metrics interceptor is always there, whatever else is given.
    assert requests_counted("Check", "OK") == before + 1


def test_metrics_count_the_calls_an_interceptor_refuses() -> None:
    async def scenario(server: GrpcServer, channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        except grpc.aio.AioRpcError as error:
            return error
        raise AssertionError("the call was not refused")

    before = requests_counted("Check", "PERMISSION_DENIED")
    error = served([Refusing()], scenario)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "refused by the test interceptor"
    assert requests_counted("Check", "PERMISSION_DENIED") == before + 1


def test_health_follows_set_serving_and_reflection_lists_the_services() -> None:
    async def scenario(server: GrpcServer, channel: grpc.aio.Channel) -> tuple[int, int, list[str]]:
        stub = health_pb2_grpc.HealthStub(channel)
        serving = (await stub.Check(health_pb2.HealthCheckRequest(service=health.SERVICE_NAME))).status
        await server.set_serving(False)
        not_serving = (await stub.Check(health_pb2.HealthCheckRequest())).status
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [service.name async for answer in call for service in answer.list_services_response.service]
        return serving, not_serving, names

    serving, not_serving, names = served([], scenario)
    assert serving == health_pb2.HealthCheckResponse.SERVING
    assert not_serving == health_pb2.HealthCheckResponse.NOT_SERVING
    assert set(names) == {health.SERVICE_NAME, reflection.SERVICE_NAME}
