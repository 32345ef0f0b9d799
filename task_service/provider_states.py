"""The provider instances as the admin API shows them: the registry's live instances, each asked for its health
now, with its circuit breakers and whether an operator drained it."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis import Redis

from aitask.provider.v1 import provider_service_pb2
from aitask.v1 import task_service_pb2 as pb
from aitask_common.breaker_state import BreakerState, BreakerStatus, breaker_statuses, instance_scope
from aitask_common.queue_shards import shared
from aitask_common.registry import DRAINING_KEY, ProviderInstance, read_draining, read_instances

PROVIDER_SERVICE = provider_service_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name
HEALTH_CHECK_SECONDS = 1.0
# Worst first: an instance shows the worst of its per-model breakers.
_SEVERITY = [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


async def provider_states(redis: Redis, instance_id: str = "") -> list[pb.ProviderInstanceState]:
    """Every live instance (or only the one named), by provider then address; drain marks of instances gone are
    dropped."""
    instances, draining, breakers = await asyncio.to_thread(_read, redis)
    gone = draining - {instance.instance_id for instance in instances}
    if gone:
        await asyncio.to_thread(redis.srem, shared(DRAINING_KEY), *gone)
    if instance_id:  # asked about one: the others' health is not
        instances = [instance for instance in instances if instance.instance_id == instance_id]
    instances.sort(key=lambda instance: (instance.provider, instance.address))
    healths = await asyncio.gather(*(_health(instance.address) for instance in instances))
    return [
        _state(instance, health, instance.instance_id in draining, breakers)
        for instance, health in zip(instances, healths, strict=True)
    ]


def _read(redis: Redis) -> tuple[list[ProviderInstance], frozenset[str], list[BreakerStatus]]:
    return read_instances(redis), read_draining(redis), breaker_statuses(redis)


async def _health(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=PROVIDER_SERVICE), timeout=HEALTH_CHECK_SECONDS
            )
        except grpc.aio.AioRpcError:
            return "unreachable"
    return "serving" if response.status == health_pb2.HealthCheckResponse.SERVING else "not_serving"


def _state(
    instance: ProviderInstance, health: str, draining: bool, breakers: list[BreakerStatus]
) -> pb.ProviderInstanceState:
    prefix = instance_scope(instance.provider, instance.instance_id, model="")
    not_closed = sorted(
        (status.scope.removeprefix(prefix), status.state)
        for status in breakers
        if status.scope.startswith(prefix) and status.state is not BreakerState.CLOSED
    )
    worst = next((state for state in _SEVERITY if state in {state for _, state in not_closed}), BreakerState.CLOSED)
    return pb.ProviderInstanceState(
        provider=instance.provider,
        instance_id=instance.instance_id,
        address=instance.address,
        health=health,
        circuit=worst.value,
        open_circuits=[f"{model}: {state.value}" for model, state in not_closed],
        in_flight=instance.in_flight,
        draining=draining,
        models=len(instance.catalogue.models),
    )
