"""The dispatcher's own Prometheus gauges: queue depth, live provider instances and circuit breakers, read from
Redis at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis

from aitask_common.breaker_state import BreakerState, breaker_statuses
from aitask_common.queue_shards import layout
from aitask_common.queue_state import AGE_SAMPLE_JOBS, oldest_queued_age
from aitask_common.queues import QUEUE_ORDER
from aitask_common.registry import read_instances
from aitask_common.rq_shards import shard_queue

# aitask_breaker_state's values.
BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class QueueAndRegistryCollector(Collector):
    """Queue depth per priority and state, and live provider instances (served by the dispatcher's main process)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "aitask_queue_depth", "Jobs per queue, state and queue shard", labels=["queue", "state", "shard"]
        )
        instances = GaugeMetricFamily("aitask_provider_instances", "Live provider instances", labels=["provider"])
        oldest = GaugeMetricFamily(
            "aitask_queue_oldest_job_age_seconds",
            "How long the oldest job at the head of each queue (per queue shard) has waited (0 when empty)",
            labels=["queue", "shard"],
        )
        breakers = GaugeMetricFamily(
            "aitask_breaker_state",
            "Circuit breaker state per scope (instance:<provider>:<id>, model:<provider>/<model>): "
            "0 closed, 1 half-open, 2 open",
            labels=["scope"],
        )
        try:
            for shard in layout().shards():
                for name in QUEUE_ORDER:
                    rq_queue = shard_queue(self.redis, name, shard)
                    labels = [str(name), str(shard)]
                    depth.add_metric([str(name), "queued", str(shard)], rq_queue.count)
                    depth.add_metric([str(name), "started", str(shard)], rq_queue.started_job_registry.count)
                    depth.add_metric([str(name), "scheduled", str(shard)], rq_queue.scheduled_job_registry.count)
                    depth.add_metric([str(name), "failed", str(shard)], rq_queue.failed_job_registry.count)
                    oldest.add_metric(labels, oldest_queued_age(self.redis, rq_queue, AGE_SAMPLE_JOBS) or 0.0)
            counts: dict[str, int] = {}
            for instance in read_instances(self.redis):
                counts[instance.provider] = counts.get(instance.provider, 0) + 1
            for provider, count in counts.items():
                instances.add_metric([provider], count)
            for status in breaker_statuses(self.redis):
                breakers.add_metric([status.scope], BREAKER_STATE_VALUES[status.state])
        except Exception:  # noqa: BLE001, S110 - Redis down: scrape what we can, health reports the outage
            pass
        yield depth
        yield instances
        yield oldest
        yield breakers
