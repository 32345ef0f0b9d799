"""Queue shards: how tasks spread over several RQ namespaces, each pinned to one Redis Cluster hash slot.

A task's jobs all live in its shard, `crc32(task_id) % QUEUE_SHARDS`. A shard is a whole RQ namespace whose every
key carries the shard's hash tag, `{q<k>}`, so that each of RQ's MULTIs (enqueue, a job's start and end, a retry)
and each of our scripts touching the shard's queue state stays in one slot, on one node:

- queue names begin with the tag (`{q1}default`): the queue list and every registry RQ names after its queue
  (`rq:queue:{q1}default`, `rq:wip:{q1}default`, ...);
- job ids begin with it (`{q1}3f2a...`): the job hash and what RQ names after a job (`rq:job:{q1}3f2a...`, its
  result stream and execution records);
- worker names begin with it, and a shard's Queue and Worker classes keep their lists of all queues and all workers
  under it (`rq:{q1}:queues`, `rq:{q1}:workers`), where RQ would share one key across shards.

Without sharding (one shard on one Redis, the default) nothing is tagged: the keys are RQ's own, as before.
RQ's side of it (its classes for a shard) is aitask_common.rq_shards; this module imports no RQ.
The tags of shards 0, 1 and 2 hash to slots 3387, 7450 and 11641: one in each third of the slot range, so
`redis-cli --cluster create` with three masters puts them on three nodes.
"""

from __future__ import annotations

import re
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

SHARD_TAG: Final = "{{q{}}}"
TAG_PREFIX: Final = re.compile(r"^\{q(\d+)\}")


@dataclass(frozen=True)
class QueueShards:
    """The shard layout: `count` shards; `tagged` when keys carry shard tags (a cluster, or more than one shard);
    `cluster` when Redis is a Redis Cluster, where a user's keys and the keys every task shares carry tags too."""

    count: int = 1
    tagged: bool = False
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"QUEUE_SHARDS must be at least 1, not {self.count}")

    @classmethod
    def layout(cls, count: int, cluster: bool) -> QueueShards:
        return cls(count, tagged=cluster or count > 1, cluster=cluster)

    def shard_of(self, task_id: str) -> int:
        """The shard every job of the task goes to (stable across processes and restarts)."""
        return zlib.crc32(task_id.encode()) % self.count if self.count > 1 else 0

    def tag(self, shard: int) -> str:
        """The hash tag of a shard's keys, or "" when keys are not tagged."""
        return SHARD_TAG.format(shard) if self.tagged else ""

    def queue_name(self, priority: str, shard: int) -> str:
        return self.tag(shard) + priority

    def new_job_id(self, shard: int) -> str:
        """A fresh job id in the shard (RQ's own kind of id, a UUID, when keys are not tagged)."""
        return self.tag(shard) + uuid.uuid4().hex if self.tagged else str(uuid.uuid4())

    def shards(self) -> range:
        return range(self.count)

    def key(self, name: str, shard: int) -> str:
        """One of our keys that a shard holds its own of (`aitask:watch` -> `aitask:watch:{q1}`)."""
        return f"{name}:{self.tag(shard)}" if self.tagged else name

    def user_key(self, prefix: str, user_id: str) -> str:
        """A key of one user's (`aitask:inflight:` + user): on a cluster the user id is its hash tag, so the keys of
        one user that a script joins share a slot."""
        return f"{prefix}{{{user_id}}}" if self.cluster else prefix + user_id

    def shared(self, key: str) -> str:
        """A key, or a prefix of keys, that every task shares (the provider registry, breakers, caps, fair share's
        bookkeeping): on a cluster they all carry one tag, `{aitask}`, so the scripts that join them work."""
        return key.replace("aitask:", "aitask:{aitask}:", 1) if self.cluster else key


# The layout every process uses, set once at start-up (configure) from QUEUE_SHARDS; one untagged shard until then.
_layout = QueueShards()


def configure(layout: QueueShards) -> None:
    global _layout
    _layout = layout


def layout() -> QueueShards:
    return _layout


@contextmanager
def configured(layout: QueueShards) -> Iterator[None]:
    """`layout` for the length of a block (a test, a bench stage), then the one before again."""
    previous = _layout
    configure(layout)
    try:
        yield
    finally:
        configure(previous)


def priority_of(queue_name: str) -> str:
    """The priority a shard's queue serves (`{q1}default` -> `default`)."""
    return TAG_PREFIX.sub("", queue_name, count=1)


def shard_of_key(name: str) -> int | None:
    """The shard a tagged queue name or job id belongs to; None when untagged."""
    match = TAG_PREFIX.match(name)
    return int(match.group(1)) if match else None


def shared(key: str) -> str:
    """`key` as the layout names a key every task shares (QueueShards.shared)."""
    return _layout.shared(key)


def user_key(prefix: str, user_id: str) -> str:
    """A user's key under `prefix`, as the layout names it (QueueShards.user_key)."""
    return _layout.user_key(prefix, user_id)
