"""The authentication interceptor, in process: a GrpcServer on 127.0.0.1 port 0 with a stand-in TaskService.

The key store stands in for task_service.api_keys.ApiKeyStore (the real one needs MongoDB); the rate
limiter for task_service.limits.RateLimiter (Redis). Everything else is the real code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, TypeVar

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY
from pymongo.errors import ServerSelectionTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from aitask_common.grpc_server import GrpcServer
from task_service import auth
from task_service.api_keys import ApiKey, Role, format_key, hash_secret, new_key
from task_service.auth import GUARDED_SERVICE, AuthInterceptor, KeyVerifier, Principal, current_principal

T = TypeVar("T")
TASK_ID = "01KBGZ0000000000000000TEST"


def stored(
    user_id: str, role: Role = Role.USER, revoked: bool = False, rate_limit: int | None = None
) -> tuple[ApiKey, str]:
    """A stored key record and the whole key a client would send."""
    key_id, secret = new_key()
    now = datetime.now(UTC)
    record = ApiKey(key_id, hash_secret(secret), user_id, role, "test", now, now if revoked else None, rate_limit)
    return record, format_key(key_id, secret)


@dataclass
class Keys:
    """Stands in for ApiKeyStore: records by key id, counting lookups; `failure` makes every lookup raise it."""

    records: dict[str, ApiKey] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    failure: Exception | None = None

    def add(self, record: ApiKey) -> None:
        self.records[record.key_id] = record

    async def get(self, key_id: str) -> ApiKey | None:
        self.lookups.append(key_id)
        if self.failure is not None:
            raise self.failure
        return self.records.get(key_id)


@dataclass
class Rate:
    """Stands in for RateLimiter: answers `retry_after` (or raises `failure`), recording what it was asked."""

    retry_after_seconds: int | None = None
    failure: Exception | None = None
    asked: list[tuple[str, int | None]] = field(default_factory=list)

    async def retry_after(self, key_id: str, limit: int | None) -> int | None:
        self.asked.append((key_id, limit))
        if self.failure is not None:
            raise self.failure
        return self.retry_after_seconds


class Servicer(task_service_pb2_grpc.TaskServiceServicer):
    """Answers GetTaskResult with nothing; records the principal and the log context each call ran with."""

    def __init__(self) -> None:
        self.calls: list[tuple[Principal, dict[str, Any]]] = []

    async def GetTaskResult(
        self, request: pb.GetTaskResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskResultResponse:
        self.calls.append((current_principal(), structlog.contextvars.get_contextvars()))
        return pb.GetTaskResultResponse(success=True, message="ok")


@dataclass
class Outcome:
    """What a client saw of one GetTaskResult call."""

    code: grpc.StatusCode
    details: str
    trailers: dict[str, str]


Scenario = Callable[[Callable[[str | None], Awaitable[Outcome]], grpc.aio.Channel], Awaitable[T]]


def served(verifier: KeyVerifier | None, rate: Rate, servicer: Servicer, scenario: Scenario[T]) -> T:
    """Run `scenario` against a GrpcServer guarded by AuthInterceptor, given a way to call GetTaskResult."""

    async def main() -> T:
        server = GrpcServer("127.0.0.1:0", [GUARDED_SERVICE], interceptors=[AuthInterceptor(verifier, rate)])
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicer, server.server)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = task_service_pb2_grpc.TaskServiceStub(channel)

                async def call(authorization: str | None) -> Outcome:
                    metadata = (("authorization", authorization),) if authorization is not None else None
                    rpc = stub.GetTaskResult(pb.GetTaskResultRequest(task_id=TASK_ID), metadata=metadata)
                    try:
                        await rpc
                    except grpc.aio.AioRpcError as error:
                        trailers = {key: str(value) for key, value in error.trailing_metadata() or ()}
                        return Outcome(error.code(), error.details() or "", trailers)
                    return Outcome(await rpc.code(), "", {})

                return await scenario(call, channel)
        finally:
            await server.stop(0)

    return asyncio.run(main())


def calls(verifier: KeyVerifier | None, rate: Rate, servicer: Servicer, *authorizations: str | None) -> list[Outcome]:
    """The outcomes of one GetTaskResult call per `authorizations` value, in order."""

    async def scenario(call: Callable[[str | None], Awaitable[Outcome]], channel: grpc.aio.Channel) -> list[Outcome]:
        return [await call(authorization) for authorization in authorizations]

    return served(verifier, rate, servicer, scenario)


def test_a_valid_key_runs_the_method_as_its_principal_with_its_key_id_in_the_log_context() -> None:
    keys, servicer, rate = Keys(), Servicer(), Rate()
    record, key = stored("alice", rate_limit=50)
    keys.add(record)
    (outcome,) = calls(KeyVerifier(keys, 30), rate, servicer, f"Bearer {key}")
    assert outcome.code is grpc.StatusCode.OK
    ((principal, log_context),) = servicer.calls
    assert principal == Principal(record.key_id, "alice", Role.USER, 50)
    assert log_context.get("key_id") == record.key_id
    assert rate.asked == [(record.key_id, 50)]


@pytest.mark.parametrize(
    ("authorization", "details"),
    [
        (None, "missing API key: send it as 'Authorization: Bearer' followed by the key"),
        ("", "missing API key: send it as 'Authorization: Bearer' followed by the key"),
        ("Basic dXNlcjpwYXNz", "invalid API key"),
        ("Bearer not-a-key", "invalid API key"),
        (f"Bearer {format_key('0123456789abcdef', 'x' * 43)}", "invalid API key"),  # unknown key id
    ],
)
def test_calls_without_a_usable_key_are_unauthenticated_before_the_servicer_runs(
    authorization: str | None, details: str
) -> None:
    servicer, rate = Servicer(), Rate()
    (outcome,) = calls(KeyVerifier(Keys(), 30), rate, servicer, authorization)
    assert outcome == Outcome(grpc.StatusCode.UNAUTHENTICATED, details, {"www-authenticate": "Bearer"})
    assert servicer.calls == [] and rate.asked == []


def test_a_wrong_secret_and_a_revoked_key_are_refused() -> None:
    keys, servicer = Keys(), Servicer()
    record, key = stored("alice")
    revoked, revoked_key = stored("bob", revoked=True)
    keys.add(record)
    keys.add(revoked)
    wrong_secret = format_key(record.key_id, new_key()[1])
    outcomes = calls(KeyVerifier(keys, 30), Rate(), servicer, f"Bearer {wrong_secret}", f"bearer {revoked_key}")
    assert [(outcome.code, outcome.details) for outcome in outcomes] == [
        (grpc.StatusCode.UNAUTHENTICATED, "invalid API key"),
        (grpc.StatusCode.UNAUTHENTICATED, "API key revoked"),
    ]
    assert servicer.calls == []


def test_over_the_rate_limit_is_resource_exhausted_with_retry_after() -> None:
    keys, servicer = Keys(), Servicer()
    record, key = stored("alice")
    keys.add(record)
    (outcome,) = calls(KeyVerifier(keys, 30), Rate(retry_after_seconds=7), servicer, f"Bearer {key}")
    assert outcome == Outcome(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded: retry after 7 s", {"retry-after": "7"}
    )
    assert servicer.calls == []


def test_a_failing_rate_limiter_admits_the_call() -> None:
    keys, servicer = Keys(), Servicer()
    record, key = stored("alice")
    keys.add(record)
    rate = Rate(failure=RedisConnectionError("redis is down"))
    (outcome,) = calls(KeyVerifier(keys, 30), rate, servicer, f"Bearer {key}")
    assert outcome.code is grpc.StatusCode.OK and len(servicer.calls) == 1


def test_an_unreachable_key_store_is_unavailable() -> None:
    servicer = Servicer()
    keys = Keys(failure=ServerSelectionTimeoutError("no MongoDB"))
    (outcome,) = calls(KeyVerifier(keys, 30), Rate(), servicer, f"Bearer {format_key('0123456789abcdef', 'x' * 43)}")
    assert (outcome.code, outcome.details) == (grpc.StatusCode.UNAVAILABLE, "authentication unavailable, retry later")
    assert servicer.calls == []


def test_without_authentication_every_caller_is_the_unauthenticated_admin() -> None:
    servicer, rate = Servicer(), Rate()
    (outcome,) = calls(None, rate, servicer, None)
    assert outcome.code is grpc.StatusCode.OK
    ((principal, log_context),) = servicer.calls
    assert principal is auth.UNAUTHENTICATED_ADMIN
    assert "key_id" not in log_context
    assert rate.asked == [("", 0)]


def test_health_and_reflection_stay_open() -> None:
    async def scenario(call: Callable[[str | None], Awaitable[Outcome]], channel: grpc.aio.Channel) -> list[Any]:
        guarded = await call(None)
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=GUARDED_SERVICE))
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [service.name async for reply in listing for service in reply.list_services_response.service]
        return [guarded.code, answer.status, names]

    guarded, status, names = served(KeyVerifier(Keys(), 30), Rate(), Servicer(), scenario)
    assert guarded is grpc.StatusCode.UNAUTHENTICATED  # the same server does guard TaskService
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert GUARDED_SERVICE in names


def test_metrics_count_refused_calls() -> None:
    def counted() -> float:
        labels = {"method": "GetTaskResult", "code": "UNAUTHENTICATED"}
        return REGISTRY.get_sample_value("aitask_grpc_requests_total", labels) or 0.0

    before = counted()
    calls(KeyVerifier(Keys(), 30), Rate(), Servicer(), None, "Bearer nonsense")
    assert counted() == before + 2


def test_verified_and_unknown_keys_are_remembered_for_the_ttl() -> None:
    keys = Keys()
    record, key = stored("alice")
    keys.add(record)
    unknown = format_key("0123456789abcdef", "x" * 43)
    outcomes = calls(KeyVerifier(keys, 30), Rate(), Servicer(), *[f"Bearer {key}", f"Bearer {unknown}"] * 3)
    assert [outcome.code for outcome in outcomes] == [grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED] * 3
    assert keys.lookups == [record.key_id, "0123456789abcdef"]
    keys.lookups.clear()
    calls(KeyVerifier(keys, 0), Rate(), Servicer(), f"Bearer {key}", f"Bearer {key}")
    assert keys.lookups == [record.key_id, record.key_id]  # a TTL of 0 remembers nothing


def test_the_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_CACHED_KEYS", 2)
    keys = Keys()
    made_up = [format_key(f"{n:016x}", "x" * 43) for n in range(3)]
    calls(KeyVerifier(keys, 30), Rate(), Servicer(), *[f"Bearer {key}" for key in [*made_up, made_up[0]]])
    # The third key id pushed the first out, so asking for it again is a lookup again.
    assert keys.lookups == [f"{n:016x}" for n in range(3)] + [f"{0:016x}"]


def test_a_client_streaming_task_service_method_is_refused_rather_than_left_unguarded() -> None:
    interceptor = AuthInterceptor(None, Rate())
    streaming = grpc.unary_stream_rpc_method_handler(lambda request, context: iter(()))
    client_streaming = grpc.stream_unary_rpc_method_handler(lambda requests, context: None)
    open_method = grpc.unary_unary_rpc_method_handler(lambda request, context: None)

    async def intercept(method: str, handler: grpc.RpcMethodHandler) -> Any:
        async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return handler

        return await interceptor.intercept_service(continuation, SimpleNamespace(method=method))

    with pytest.raises(NotImplementedError):
        asyncio.run(intercept(f"/{GUARDED_SERVICE}/Upload", client_streaming))
    # A server-streaming TaskService method (WatchTask) is guarded like a unary one.
    guarded = asyncio.run(intercept(f"/{GUARDED_SERVICE}/WatchTask", streaming))
    assert guarded is not streaming and guarded.unary_stream is not None
    # Another service's methods, streaming or not, are passed on untouched.
    assert asyncio.run(intercept("/grpc.health.v1.Health/Watch", streaming)) is streaming
    assert asyncio.run(intercept("/grpc.health.v1.Health/Check", open_method)) is open_method
