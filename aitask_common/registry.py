"""Provider registry in Redis: live instances with their address and catalogue.

Each instance owns one key that expires unless its heartbeat renews it, so a
killed instance disappears by itself; a set indexes the keys so readers never
SCAN the keyspace (which also holds every RQ job).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import uuid
from dataclasses import dataclass, field

from google.protobuf import json_format
from redis import Redis
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from aitask.provider.v1 import provider_service_pb2
from aitask_common.logging import get_logger
from aitask_common.metrics import in_flight_calls
from aitask_common.queue_shards import shared

log = get_logger(__name__)

INDEX_KEY = "aitask:registry:instances"
INSTANCE_KEY_PREFIX = "aitask:registry:instance:"
# The last catalogue each provider published outlives its instances, so a request
# for a provider that is briefly down is still validated (and waits, pending).
CATALOGUES_KEY = "aitask:registry:catalogues"
# Instance ids an operator drained: the dispatchers send them no new calls (AdminService.DrainProvider).
DRAINING_KEY = "aitask:registry:draining"


@dataclass(frozen=True)
class ProviderInstance:
    """One live provider process."""

    provider: str
    instance_id: str
    address: str
    catalogue: provider_service_pb2.DescribeCatalogueResponse = field(compare=False)
    # Calls it was serving at its last heartbeat.
    in_flight: int = field(default=0, compare=False)

    @property
    def key(self) -> str:
        """The Redis key this instance's heartbeat keeps alive."""
        return f"{shared(INSTANCE_KEY_PREFIX)}{self.provider}:{self.instance_id}"

    def to_json(self) -> str:
        """Serialise for Redis."""
        return json.dumps(
            {
                "provider": self.provider,
                "instance_id": self.instance_id,
                "address": self.address,
                "in_flight": self.in_flight,
                "catalogue": json_format.MessageToDict(self.catalogue, preserving_proto_field_name=True),
            }
        )

    @classmethod
    @functools.lru_cache(maxsize=256)
    def from_json(cls, raw: str | bytes) -> ProviderInstance:
        """Parse what `to_json` wrote (memoised: readers re-read the registry every second, and
        parsing a catalogue costs more than reading it; callers must not modify the result)."""
        data = json.loads(raw)
        catalogue = json_format.ParseDict(data["catalogue"], provider_service_pb2.DescribeCatalogueResponse())
        return cls(data["provider"], data["instance_id"], data["address"], catalogue, data.get("in_flight", 0))


def read_instances(redis: Redis) -> list[ProviderInstance]:
    """Every live instance; index entries whose key expired are pruned."""
    keys = sorted(redis.smembers(shared(INDEX_KEY)))
    if not keys:
        return []
    values = redis.mget(keys)
    expired = [key for key, value in zip(keys, values, strict=True) if value is None]
    if expired:
        redis.srem(shared(INDEX_KEY), *expired)
    return [ProviderInstance.from_json(value) for value in values if value is not None]


def read_draining(redis: Redis) -> frozenset[str]:
    """The ids of the instances drained by an operator."""
    return frozenset(
        member.decode() if isinstance(member, bytes) else member for member in redis.smembers(shared(DRAINING_KEY))
    )


def read_catalogues(redis: Redis) -> dict[str, provider_service_pb2.DescribeCatalogueResponse]:
    """The last published catalogue of every provider ever registered, by provider name."""
    return {
        (name.decode() if isinstance(name, bytes) else name): _parse_catalogue(raw)
        for name, raw in redis.hgetall(shared(CATALOGUES_KEY)).items()
    }


@functools.lru_cache(maxsize=64)
def _parse_catalogue(raw: str | bytes) -> provider_service_pb2.DescribeCatalogueResponse:
    """A published catalogue, parsed once per distinct text (callers must not modify it)."""
    return json_format.Parse(raw, provider_service_pb2.DescribeCatalogueResponse())


class RegistryPublisher:
    """Keeps one provider instance registered while it runs."""

    def __init__(
        self,
        redis: aioredis.Redis,
        provider: str,
        address: str,
        catalogue: provider_service_pb2.DescribeCatalogueResponse,
        ttl_seconds: float,
    ) -> None:
        self.redis = redis
        self.instance = ProviderInstance(provider, uuid.uuid4().hex[:12], address, catalogue)
        self.ttl_ms = int(ttl_seconds * 1000)
        self._heartbeat: asyncio.Task[None] | None = None

    async def register(self) -> None:
        """Publish the instance and keep renewing it every third of its TTL."""
        await self._publish()
        self._heartbeat = asyncio.create_task(self._beat())
        log.info("registered provider instance", provider=self.instance.provider, address=self.instance.address)

    async def deregister(self) -> None:
        """Stop the heartbeat and remove the instance at once."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.instance.key)
                pipe.srem(shared(INDEX_KEY), self.instance.key)
                await pipe.execute()
        except RedisError as error:
            # Stopping while Redis is down must still stop cleanly; the entry expires with its TTL.
            log.warning("could not deregister: Redis unreachable", error=str(error))
            return
        log.info("deregistered provider instance", provider=self.instance.provider)

    async def _publish(self) -> None:
        catalogue = json_format.MessageToJson(self.instance.catalogue, preserving_proto_field_name=True)
        current = dataclasses.replace(self.instance, in_flight=in_flight_calls())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.instance.key, current.to_json(), px=self.ttl_ms)
            pipe.sadd(shared(INDEX_KEY), self.instance.key)
            pipe.hset(shared(CATALOGUES_KEY), self.instance.provider, catalogue)
            await pipe.execute()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self._publish()
            except Exception as error:  # noqa: BLE001 - a missed beat must not kill the provider
                log.warning("registry heartbeat failed", error=str(error))
