"""Who is calling: API-key authentication and the interceptor that guards every TaskService and AdminService
method.

Clients send `Authorization: Bearer ak_<key id>_<secret>` (an HTTP header over
REST, the same metadata over gRPC). The interceptor authenticates each call,
applies the key's request rate, and makes the caller's `Principal` current for
the servicer (a contextvar: each RPC runs in its own asyncio task). Only
TaskService and AdminService methods are guarded: health checks and reflection stay open for
probes. Verified keys are cached for API_KEY_CACHE_SECONDS, so a revoked key
keeps working for at most that long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from cachetools import TTLCache
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from aitask.v1 import task_service_pb2
from aitask_common.logging import bound_log_context, get_logger
from task_service.api_keys import ApiKey, Role, split_key

log = get_logger(__name__)

# Most key ids the verifier remembers at once.
MAX_CACHED_KEYS = 10_000

# The services the interceptor guards; every other one (health, reflection) stays open.
GUARDED_SERVICE = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name
ADMIN_SERVICE = task_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name

RpcMethod = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamingRpcMethod = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class KeyRecords(Protocol):
    """Where API keys are stored (task_service.api_keys.ApiKeyStore)."""

    async def get(self, key_id: str) -> ApiKey | None:
        """The record of `key_id`, or None."""
        ...


class RequestRate(Protocol):
    """The per-key request rate (task_service.limits.RateLimiter)."""

    async def retry_after(self, key_id: str, limit: int | None) -> int | None:
        """Count one request; seconds until the key may call again when over its limit, else None."""
        ...


@dataclass(frozen=True)
class Principal:
    """The caller of one RPC: the key it used, the user it belongs to, and its role."""

    key_id: str
    user_id: str
    role: Role
    # Requests per rate-limit window; None means the service's default, 0 no limit.
    rate_limit: int | None

    def may_act_for(self, user_id: str) -> bool:
        """A user key acts only for its own user; an admin key for anyone."""
        return self.role is Role.ADMIN or user_id == self.user_id

    def user_or_own(self, user_id: str) -> str:
        """`user_id`, or when it is empty a user key's own user: such a key can act for no one else, so naming
        it adds nothing (an admin key, or no key at all, must still say whom it acts for)."""
        return user_id or (self.user_id if self.role is not Role.ADMIN else "")


# With authentication off (ENVIRONMENT=development) every caller is this.
UNAUTHENTICATED_ADMIN = Principal(key_id="", user_id="", role=Role.ADMIN, rate_limit=0)

_CURRENT_PRINCIPAL: ContextVar[Principal] = ContextVar("principal")


def current_principal() -> Principal:
    """The caller of the RPC being served (set by AuthInterceptor)."""
    return _CURRENT_PRINCIPAL.get()


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    """The first value of invocation metadata `name` (lowercase), or None."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else None
    return None


class AuthenticationFailed(Exception):
    """The call carries no usable API key; the message says why (safe to show the caller)."""


class KeyVerifier:
    """Checks presented keys against the stored hashes, remembering each key id's record for a short TTL.

    Unknown key ids are remembered too, so made-up keys cannot make every request a MongoDB lookup.
    """

    def __init__(self, store: KeyRecords, ttl_seconds: float) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        # Bounded however many distinct (possibly made-up) key ids clients send.
        self._cache: TTLCache[str, ApiKey | None] = TTLCache(maxsize=MAX_CACHED_KEYS, ttl=ttl_seconds)

    async def verify(self, authorization: str | None) -> Principal:
        """The principal of an `authorization` value; AuthenticationFailed when it is missing or not valid."""
        if not authorization:
            raise AuthenticationFailed("missing API key: send it as 'Authorization: Bearer' followed by the key")
        scheme, _, token = authorization.strip().partition(" ")
        parts = split_key(token.strip()) if scheme.lower() == "bearer" else None
        if parts is None:
            raise AuthenticationFailed("invalid API key")
        key_id, secret = parts
        record = await self._record(key_id)
        if record is None or not record.matches(secret):
            raise AuthenticationFailed("invalid API key")
        if record.revoked is not None:
            raise AuthenticationFailed("API key revoked")
        return Principal(record.key_id, record.user_id, record.role, record.rate_limit)

    async def _record(self, key_id: str) -> ApiKey | None:
        try:
            return self._cache[key_id]
        except KeyError:
            pass  # not cached, or expired
        record = await self.store.get(key_id)
        self._cache[key_id] = record
        return record


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits calls to TaskService methods: authentication (when on), then the per-key rate limit.

    An admitted call runs with its caller's principal current and its key id in every log line; a
    refused one is aborted before the servicer sees it.
    """

    def __init__(self, verifier: KeyVerifier | None, rate_limiter: RequestRate) -> None:
        self.verifier = verifier
        self.rate_limiter = rate_limiter
        self._prefixes = (f"/{GUARDED_SERVICE}/", f"/{ADMIN_SERVICE}/")
        # The guarded handler of each method, built once: (the servicer's handler, its guarded stand-in).
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        if handler is None or not method.startswith(self._prefixes):
            return handler
        if handler.unary_unary is not None:
            guarded = grpc.unary_unary_rpc_method_handler(
                self._wrap(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream is not None:
            guarded = grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        else:
            # Fail closed: a client-streaming TaskService method would otherwise run unguarded.
            raise NotImplementedError(f"{method}: only unary and server-streaming methods can be guarded")
        self._guarded[method] = (handler, guarded)
        return guarded

    def _wrap(self, method: RpcMethod) -> RpcMethod:
        """`method`, run only for admitted callers, with their principal current."""

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            principal = await self._admit(context)
            token = _CURRENT_PRINCIPAL.set(principal)
            try:
                # Every log line of the call names the key (none when authentication is off).
                with bound_log_context(**({"key_id": principal.key_id} if principal.key_id else {})):
                    return await method(request, context)
            finally:
                _CURRENT_PRINCIPAL.reset(token)

        return guarded

    def _wrap_stream(self, method: StreamingRpcMethod) -> StreamingRpcMethod:
        """`_wrap` for a server-streaming method: admitted once, its principal current for the whole stream."""

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            principal = await self._admit(context)
            token = _CURRENT_PRINCIPAL.set(principal)
            try:
                with bound_log_context(**({"key_id": principal.key_id} if principal.key_id else {})):
                    async for response in method(request, context):
                        yield response
            finally:
                _CURRENT_PRINCIPAL.reset(token)

        return guarded

    async def _admit(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = await self._authenticate(context)
        try:
            retry_after = await self.rate_limiter.retry_after(principal.key_id, principal.rate_limit)
        except RedisError as error:
            # Fail open: reads must keep working while Redis is down (MongoDB is the source of truth).
            log.warning("rate limit unavailable; request admitted", error=str(error))
            retry_after = None
        if retry_after is not None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit exceeded: retry after {retry_after} s",
                trailing_metadata=(("retry-after", str(retry_after)),),
            )
        return principal

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        if self.verifier is None:
            return UNAUTHENTICATED_ADMIN
        try:
            return await self.verifier.verify(metadata_value(context, "authorization"))
        except AuthenticationFailed as error:
            # Envoy passes trailers-only metadata on as HTTP headers: a 401 names its scheme (RFC 9110).
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, str(error), trailing_metadata=(("www-authenticate", "Bearer"),)
            )
        except PyMongoError as error:
            log.error("api key store unavailable", error=str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "authentication unavailable, retry later")
        raise AssertionError("unreachable: abort raises")
