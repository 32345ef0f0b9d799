"""Waiters and watchers of tasks, served from one MongoDB read per change per process.

A `WatchHub` per task-service process keeps ONE Redis pub/sub connection. While a task has at least one local
follower (a create or get that waits, a WatchTask stream), the hub subscribes to its change channel
(aitask_common.events) and keeps its latest state: on each notice it re-reads the task from MongoDB once and
hands the new state to every follower, however many there are. A follower that arrives while the task is
already followed gets that state at once, without a read.

A notice may be lost (pub/sub is fire and forget; Redis may restart): every followed task is also re-read
every REFRESH_SECONDS, and after the pub/sub connection comes back, so a lost notice costs latency, never a
stuck follower. While Redis is down the hub keeps serving from those re-reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from aitask.v1 import task_service_pb2 as pb
from aitask_common.events import EventKind, channel, task_id_of
from aitask_common.logging import QuietWarnings, get_logger
from aitask_common.outputs import OutputLinks
from aitask_common.tasks import TaskStatus, task_to_proto
from task_service.queue_position import QueuePositions
from task_service.storage import TaskStore

log = get_logger(__name__)

# A followed task is re-read this often even without a notice (a lost notice costs at most this long).
REFRESH_SECONDS = 12.0
# After a failed read, the next one comes this soon.
READ_RETRY_SECONDS = 1.0
# How long a new follower's first read waits for Redis to confirm the subscription (normally well under 1 ms):
# reading after the confirmation means no change can fall between the read and the first notice.
SUBSCRIBE_CONFIRM_SECONDS = 1.0
# Reconnecting to Redis backs off from the first to the last delay.
RECONNECT_FIRST_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0
# At most one warning per this many seconds while Redis is failing.
WARNING_INTERVAL_SECONDS = 60.0

TASK_READS_FOR_WATCHERS = Counter(
    "aitask_task_reads_for_watchers_total",
    "MongoDB reads of followed tasks by the watch hub: one per change notice or refresh per process, "
    "however many clients wait or watch",
)
TASK_WATCHERS = Gauge("aitask_task_watchers", "Clients of this process waiting on or watching a task")
WATCHED_TASKS = Gauge("aitask_watched_tasks", "Tasks this process follows for its waiters and watchers")

# A task's state as followers see it: None when the task does not exist (never did, or was deleted).
Snapshot = pb.Task | None
ReadTask = Callable[[str], Awaitable[Snapshot]]


class StoreUnavailable(Exception):
    """The task could not be read (MongoDB unreachable) before a follower saw any state."""


def is_final(snapshot: Snapshot) -> bool:
    """Whether no change can follow: the task is final, or gone."""
    return snapshot is None or TaskStatus(snapshot.status).is_final


def task_reader(store: TaskStore, positions: QueuePositions, links: OutputLinks) -> ReadTask:
    """The hub's read: the task as GetTaskResult answers it (a fresh output link signed at the read)."""

    async def read(task_id: str) -> Snapshot:
        document = await store.get(task_id, None)  # followers of any user share the read: by id alone
        if document is None:
            return None
        task = links.sign(task_to_proto(document))
        await positions.fill_in(task)
        return task

    return read


async def task_events(follower: Follower, current: pb.Task) -> AsyncIterator[pb.TaskEvent]:
    """A watch stream: `current` first ("status", or "final" if it is), then every status change ("status") and
    progress update ("progress"), the final state ("final") last. A task deleted meanwhile ends the stream with
    an unsuccessful "final" message (code NOT_FOUND)."""
    previous: pb.Task | None = None
    state: Snapshot = current
    while state is not None:
        kind = _event_kind(previous, state)
        if kind is not None:
            yield pb.TaskEvent(success=True, event=kind.value, task=state)
        if kind is EventKind.FINAL:
            return
        previous = state
        state = await follower.next()
    message = f"task {current.task_id!r} not found: it was deleted"
    yield pb.TaskEvent(success=False, event=EventKind.FINAL.value, message=message, code="NOT_FOUND")


def _event_kind(previous: pb.Task | None, state: pb.Task) -> EventKind | None:
    """What a new state is to a watcher; None when nothing it is told about changed (e.g. the queue position)."""
    if TaskStatus(state.status).is_final:
        return EventKind.FINAL
    if previous is None or previous.status != state.status:
        return EventKind.STATUS
    if (previous.HasField("progress"), previous.progress) != (state.HasField("progress"), state.progress):
        return EventKind.PROGRESS
    return None


class Follower:
    """One waiter or watcher: receives every state of the task the hub reads, in order, from the current one."""

    def __init__(self) -> None:
        self._states: asyncio.Queue[Snapshot | StoreUnavailable] = asyncio.Queue()
        self.seen_state = False

    def _offer(self, state: Snapshot | StoreUnavailable) -> None:
        if isinstance(state, StoreUnavailable) and self.seen_state:
            return  # a running watch rides out a failed re-read: the next one comes soon
        self._states.put_nowait(state)

    async def next(self, timeout: float | None = None) -> Snapshot:
        """The next state (the current one first); TimeoutError after `timeout` s, StoreUnavailable when the
        first read failed."""
        async with asyncio.timeout(timeout):
            state = await self._states.get()
        if isinstance(state, StoreUnavailable):
            raise state
        self.seen_state = True
        return state

    async def until_final(self, current: Snapshot, seconds: float) -> Snapshot:
        """The task's state once it is final, or after `seconds`, whichever is first (`current`: the last seen)."""
        deadline = time.monotonic() + seconds
        while not is_final(current):
            try:
                current = await self.next(deadline - time.monotonic())
            except TimeoutError:
                break
        return current


@dataclass(eq=False)
class _Followed:
    """One followed task: its followers, its latest state, and the loop that keeps that state current."""

    task_id: str
    followers: set[Follower] = field(default_factory=set)
    known: bool = False
    state: Snapshot = None
    encoded: bytes | None = None
    # Set by a notice (or a reconnect): re-read now.
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when Redis confirms the subscription.
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def offer(self, state: Snapshot) -> None:
        """Hand a freshly read state to every follower, if it differs from the last one."""
        encoded = None if state is None else state.SerializeToString(deterministic=True)
        if self.known and encoded == self.encoded:
            return
        self.known, self.state, self.encoded = True, state, encoded
        for follower in self.followers:
            follower._offer(state)

    def fail(self) -> None:
        for follower in self.followers:
            follower._offer(StoreUnavailable("task database unavailable, retry later"))


class WatchHub:
    """The per-process registry of followed tasks and its one pub/sub connection."""

    def __init__(self, redis: Redis, read: ReadTask, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.redis = redis
        self.read = read
        self.refresh_seconds = refresh_seconds
        self._followed: dict[str, _Followed] = {}
        self._pubsub: PubSub | None = None
        self._pump: asyncio.Task[None] | None = None
        # Background subscribe/unsubscribe calls, referenced until done.
        self._background: set[asyncio.Task[Any]] = set()
        self._warn = QuietWarnings(log, WARNING_INTERVAL_SECONDS)

    def start(self) -> None:
        """Start the pub/sub connection (in the running event loop)."""
        self._pump = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        """Stop every loop and close the connection."""
        tasks = [self._pump, *(entry.runner for entry in self._followed.values()), *self._background]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(task for task in tasks if task is not None), return_exceptions=True)
        self._followed.clear()
        await self.redis.aclose()

    async def publish(self, task_id: str, kind: EventKind) -> None:
        """Tell every process's followers that `task_id` changed (after the MongoDB write); best effort."""
        try:
            await self.redis.publish(channel(task_id), kind.value)
        except RedisError as error:
            self._warn("task event not published", error)

    @asynccontextmanager
    async def follow(self, task_id: str) -> AsyncIterator[Follower]:
        """Follow `task_id` for as long as the block runs."""
        entry = self._followed.get(task_id)
        if entry is None:
            entry = self._followed[task_id] = _Followed(task_id)
            entry.runner = asyncio.create_task(self._keep_current(entry))
            WATCHED_TASKS.inc()
        follower = Follower()
        entry.followers.add(follower)
        TASK_WATCHERS.inc()
        if entry.known:
            follower._offer(entry.state)
        try:
            yield follower
        finally:
            entry.followers.discard(follower)
            TASK_WATCHERS.dec()
            if not entry.followers and self._followed.get(task_id) is entry:
                del self._followed[task_id]
                WATCHED_TASKS.dec()
                if entry.runner is not None:
                    entry.runner.cancel()
                self._in_background(self._unsubscribe(task_id))

    # --- keeping one task's state current ----------------------------------------------------------

    async def _keep_current(self, entry: _Followed) -> None:
        await self._subscribe(entry)
        while True:
            entry.dirty.clear()
            TASK_READS_FOR_WATCHERS.inc()
            try:
                state = await self.read(entry.task_id)
            except PyMongoError as error:
                log.warning("watched task not read", task_id=entry.task_id, error=str(error))
                entry.fail()
                pause = READ_RETRY_SECONDS
            except Exception:  # noqa: BLE001 - a loop that dies would leave its followers waiting for ever
                log.exception("watched task not read", task_id=entry.task_id)
                entry.fail()
                pause = READ_RETRY_SECONDS
            else:
                entry.offer(state)
                pause = self.refresh_seconds
            with suppress(TimeoutError):
                await asyncio.wait_for(entry.dirty.wait(), pause)

    async def _subscribe(self, entry: _Followed) -> None:
        """Subscribe to the task's channel and wait for Redis to confirm (not while Redis is down: the
        reconnect subscribes every followed task and re-reads it)."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            await pubsub.subscribe(channel(entry.task_id))
        except RedisError as error:
            self._warn("task events subscription failed", error)
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(entry.subscribed.wait(), SUBSCRIBE_CONFIRM_SECONDS)

    async def _unsubscribe(self, task_id: str) -> None:
        pubsub = self._pubsub
        if pubsub is None or task_id in self._followed:
            return
        with suppress(RedisError):
            await pubsub.unsubscribe(channel(task_id))

    def _in_background(self, awaitable: Awaitable[None]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- the pub/sub connection --------------------------------------------------------------------

    async def _listen(self) -> None:
        """Hold the pub/sub connection: route notices to followed tasks; reconnect (and resubscribe) on failure."""
        delay = RECONNECT_FIRST_SECONDS
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
                # redis-py reconnects and resubscribes by itself when it can: notices lost meanwhile need a re-read.
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(self._reconnected)
                followed = list(self._followed.values())
                if followed:
                    await pubsub.subscribe(*(channel(entry.task_id) for entry in followed))
                self._pubsub = pubsub
                if delay > RECONNECT_FIRST_SECONDS:
                    log.info("task events connection restored", followed_tasks=len(followed))
                delay = RECONNECT_FIRST_SECONDS
                for entry in followed:
                    entry.dirty.set()  # notices may have been lost while disconnected
                while True:
                    self._route(await pubsub.get_message(timeout=None))
            except (RedisError, OSError) as error:
                self._warn("task events connection lost; watched tasks are re-read on a timer until it is back", error)
            finally:
                self._pubsub = None
                with suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _reconnected(self, connection: Any) -> None:
        """redis-py re-established the pub/sub connection on its own: re-read every followed task."""
        for entry in self._followed.values():
            entry.dirty.set()

    def _route(self, message: dict[str, Any] | None) -> None:
        if message is None or message.get("type") not in ("message", "subscribe"):
            return
        entry = self._followed.get(task_id_of(message["channel"]))
        if entry is None:
            return
        if message["type"] == "subscribe":
            entry.subscribed.set()
        else:
            entry.dirty.set()
