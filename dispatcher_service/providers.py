"""Finding and calling provider instances: registry cache, pooled channels, round-robin, failover."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from redis import Redis
from redis.exceptions import RedisError

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask.provider.v1 import provider_service_pb2_grpc
from aitask_common.breaker_state import instance_scope
from aitask_common.logging import get_logger
from aitask_common.provider_errors import RETRY_AFTER_METADATA, UPSTREAM_ERROR_METADATA
from aitask_common.registry import ProviderInstance, read_catalogues, read_draining, read_instances
from dispatcher_service.breakers import FAILURE_CODES, Breakers
from dispatcher_service.read_cache import ReadThroughCache

log = get_logger(__name__)

T = TypeVar("T")


class ProviderCallError(Exception):
    """A provider call failed: the provider's status (from the upstream or its own checks)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_seconds = retry_after_seconds


class BreakersOpen(Exception):
    """Every live instance of the provider has its circuit breaker open: nothing was called."""

    def __init__(self, provider: str, wait_seconds: float) -> None:
        super().__init__(f"every instance of provider {provider!r} has its circuit breaker open")
        self.wait_seconds = wait_seconds


class NoLiveInstance(ProviderCallError):
    """Every registered instance of the provider failed to answer."""

    def __init__(self, provider: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, f"no live instance of provider {provider!r} answered")


@dataclass(frozen=True)
class _Registry:
    """One read of the registry: live instances and the catalogues they published."""

    instances: list[ProviderInstance]
    catalogues: dict[str, pb.DescribeCatalogueResponse]
    # Instance ids an operator drained: sent no new calls.
    draining: frozenset[str] = frozenset()

    def live(self, provider: str) -> list[ProviderInstance]:
        """The provider's instances that take calls."""
        return [i for i in self.instances if i.provider == provider and i.instance_id not in self.draining]


# The registry is read whole, under this one cache key.
_REGISTRY = "registry"


def _find_model(registry: _Registry, provider: str, name: str) -> pb.Model | None:
    catalogue = registry.catalogues.get(provider)
    return next((model for model in catalogue.models if model.name == name), None) if catalogue else None


class ProviderDirectory:
    """Per-process view of the registry plus one gRPC channel per instance address."""

    def __init__(self, redis: Redis, cache_seconds: float, breakers: Breakers | None = None) -> None:
        self.redis = redis
        self.breakers = breakers
        self._registry = ReadThroughCache(self._read_registry, cache_seconds, maxsize=1)
        self._last_registry: _Registry | None = None
        self._channels: dict[str, grpc.Channel] = {}
        # Round-robin turns, one counter per kind of call: an image's Generate is followed by its output's
        # FetchOutput, and one shared counter would send every Generate to the same instance. Each process starts
        # at a random turn: workers forked together would otherwise all send their first call to the same one.
        self._turn = itertools.count(random.randrange(1 << 16))
        self._stream_turn = itertools.count(random.randrange(1 << 16))

    def _read_registry(self, _: str) -> _Registry:
        """The registry; while Redis is unreachable, the last one read (a call already made, perhaps paid for,
        must still reach a provider to fetch its output; an instance gone meanwhile fails over as usual). A
        catalogue Redis forgot (it restarted without data) is kept until its provider publishes again."""
        try:
            known = self._last_registry.catalogues if self._last_registry else {}
            registry = _Registry(
                read_instances(self.redis), known | read_catalogues(self.redis), read_draining(self.redis)
            )
        except RedisError as error:
            if self._last_registry is None:
                raise
            log.warning("registry unreadable: using the last one read", error=str(error))
            return self._last_registry
        self._last_registry = registry
        return registry

    def model(self, provider: str, name: str) -> pb.Model | None:
        """The catalogue entry of provider/name as last published (read again if the cached copy lacks it: a
        provider that just started, or just added the model, should not wait out the cache)."""
        found = _find_model(self._registry.get(_REGISTRY), provider, name)
        return found or _find_model(self._registry.get(_REGISTRY, fresh=True), provider, name)

    def has_catalogue(self, provider: str) -> bool:
        """Whether the provider has published a catalogue (so a model missing from it is truly gone)."""
        return provider in self._registry.get(_REGISTRY).catalogues

    def _candidates(self, provider: str) -> list[ProviderInstance]:
        candidates = self._registry.get(_REGISTRY).live(provider)
        if not candidates:
            # A provider that just started (or was undrained) should not wait out the cache.
            candidates = self._registry.get(_REGISTRY, fresh=True).live(provider)
        return candidates

    def has_instance(self, provider: str) -> bool:
        """Whether at least one instance of the provider is registered."""
        return bool(self._candidates(provider))

    def call(
        self,
        provider: str,
        method: Callable[[Any], Callable[..., T]],
        request: Any,
        timeout: float,
        guarded_model: str | None = None,
    ) -> T:
        """Call `method(stub)(request)` on a live instance, failing over while instances are unreachable.

        `guarded_model` (a call of that model that may cost money: Generate, SubmitJob): instances whose circuit
        breaker for the model is open are skipped, and the outcome is counted against the breaker of the instance
        called; BreakersOpen when every instance's is open. Polls and cancels are not guarded: they must reach
        their job whatever its state."""
        candidates = self._candidates(provider)
        start = next(self._turn)
        shortest_wait: float | None = None
        for offset in range(len(candidates)):
            instance = candidates[(start + offset) % len(candidates)]
            scope = instance_scope(provider, instance.instance_id, guarded_model or "")
            if guarded_model and self.breakers is not None:
                wait = self.breakers.admit(scope)
                if wait is not None:
                    shortest_wait = wait if shortest_wait is None else min(wait, shortest_wait)
                    continue
            stub = provider_service_pb2_grpc.ProviderServiceStub(self._channel(instance.address))
            try:
                response = method(stub)(request, timeout=timeout)
            except grpc.RpcError as error:
                if guarded_model:
                    self._record(scope, error.code() in FAILURE_CODES)
                if _instance_gone(error):
                    # The instance itself is gone or dying: try the next one.
                    log.warning("provider instance unreachable", provider=provider, address=instance.address)
                    self._forget(instance.address)
                    continue
                raise _call_error(error) from error
            if guarded_model:
                self._record(scope, False)
            return response
        if shortest_wait is not None:
            raise BreakersOpen(provider, shortest_wait)
        raise NoLiveInstance(provider)

    def stream(
        self, provider: str, method: Callable[[Any], Callable[..., Iterator[T]]], request: Any, timeout: float
    ) -> Iterator[T]:
        """The messages of a server-streaming `method(stub)(request)`, failing over while no message has come;
        a stream that breaks off later raises ProviderCallError (what it sent cannot be taken back)."""
        candidates = self._candidates(provider)
        start = next(self._stream_turn)
        for offset in range(len(candidates)):
            instance = candidates[(start + offset) % len(candidates)]
            stub = provider_service_pb2_grpc.ProviderServiceStub(self._channel(instance.address))
            received = False
            try:
                for message in method(stub)(request, timeout=timeout):
                    received = True
                    yield message
                return
            except grpc.RpcError as error:
                if not received and _instance_gone(error):
                    log.warning("provider instance unreachable", provider=provider, address=instance.address)
                    self._forget(instance.address)
                    continue
                raise _call_error(error) from error
        raise NoLiveInstance(provider)

    def _record(self, scope: str, failed: bool) -> None:
        """Count a call's outcome against its instance's breaker; best effort: a call already made (perhaps paid
        for) must go on to store its outcome while Redis is down."""
        if self.breakers is None:
            return
        try:
            self.breakers.record(scope, failed, self.breakers.settings.breaker_min_calls)
        except RedisError as error:
            log.warning("circuit breaker not updated", breaker=scope, error=str(error))

    def connect(self, timeout: float) -> None:
        """Open a channel to every live instance now (a worker's bootstrap), so the worker's first task does not wait
        for its connection. Best effort: an instance not ready within `timeout` is connected on first use, as any."""
        try:
            registry = self._registry.get(_REGISTRY)
        except RedisError:
            return
        deadline = time.monotonic() + timeout
        pending = [
            grpc.channel_ready_future(self._channel(instance.address))
            for instance in registry.instances
            if instance.instance_id not in registry.draining
        ]
        for ready in pending:
            try:
                ready.result(timeout=max(deadline - time.monotonic(), 0.0))
            except grpc.FutureTimeoutError:
                ready.cancel()  # stop watching it: the channel still connects, or is retried on first use

    def _channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.insecure_channel(address)
        return channel

    def _forget(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            channel.close()
        self._registry.clear()


def _instance_gone(error: grpc.RpcError) -> bool:
    """Whether the instance itself failed (gone or dying), not the upstream behind it."""
    trailers = dict(error.trailing_metadata() or ())
    return error.code() == grpc.StatusCode.UNAVAILABLE and UPSTREAM_ERROR_METADATA not in trailers


def _call_error(error: grpc.RpcError) -> ProviderCallError:
    """A failed call as the dispatcher acts on it: the status and the upstream's Retry-After."""
    retry_after = dict(error.trailing_metadata() or ()).get(RETRY_AFTER_METADATA)
    return ProviderCallError(error.code(), error.details() or "", int(retry_after) / 1000 if retry_after else None)
