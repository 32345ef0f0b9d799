"""Delivers stored webhook messages (aitask_common.webhooks): a thread of the dispatcher's main process running an
asyncio loop, so a thousand receivers that each hang for the whole timeout cost sockets, not workers, and never
touch the task path.

Each round claims due message ids from the Redis sorted set of due messages (DUE_KEY) in one script that also pushes
each claimed id's score a lease ahead (a dispatcher killed mid-delivery leaves it to be claimed again once the lease
passes: at least once), renders the final messages a worker only indexed from the copy of their task it left in
Redis, reads the others from MongoDB by id (one equality read each: FerretDB serves those from its index, an `$in`
by reading every message; a final message neither stored nor copied is rendered from its task), and starts them as
their hosts have room (at most
WEBHOOK_PER_HOST_CONCURRENCY deliveries in flight per host; the others wait in this process, their lease renewed). A
delivery resolves the host, refuses it unless every address may be reached, connects to the checked address itself
(Host header and TLS SNI name the host, so a DNS answer that changes between check and connect cannot redirect it),
signs with every live secret of the user, follows no redirect and reads at most a short excerpt of the answer.
Attempts are recorded in MongoDB in batches (one bulk write for every attempt that ended meanwhile), then the sorted
set is updated: a delivered message leaves it, a retried one is scored by its next attempt. A final message rendered
from its task is stored with its first attempt, in one insert (FerretDB spends about 7 times an insert's CPU on an
update): until then the task's final write is its stored copy, and a dispatcher killed meanwhile leaves its id
leased in the due set for the next claim to render it again.

The thread runs at a lower priority (WEBHOOK_DELIVERY_NICE): when the CPU is short, the task path comes first and
deliveries catch up after.

MongoDB is the truth: the sorted set is rebuilt from the pending messages when Redis has lost it (its completion
mark is gone), and the final tasks of the last SWEEP_REBUILD_LOOKBACK without a stored message get one; it is
re-filled every RECONCILE_EVERY_SECONDS in case an index write failed; a claimed id whose message is no longer
pending is dropped from it, one not due yet is scored again by its stored due time. The sweep for final messages
never stored asks Redis first (due ids, and the final messages this loop stored lately: STORED_FINALS_KEY) and reads
MongoDB only for the other tasks it finds (Redis having lost both, for all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp
import bson
import httpx
import yarl
from cachetools import TTLCache
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, PyMongoError
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from standardwebhooks.webhooks import Webhook

from aitask_common.events import EventKind
from aitask_common.logging import get_logger
from aitask_common.mongo import DUPLICATE_KEY, UPDATE_STATEMENTS_MAX, client_options
from aitask_common.redis_clients import async_redis_client
from aitask_common.tasks import COLLECTION, FINAL_BUCKETS_FIELD, final_buckets_between, utcnow
from aitask_common.tracing import job_span
from aitask_common.webhook_addresses import AddressRefused, allowed_addresses
from aitask_common.webhook_signing import SECRET_MARKS_KEY, UserSecrets, WebhookSecretStore, cipher
from aitask_common.webhooks import (
    DUE_COMPLETE_KEY,
    DUE_KEY,
    EXCERPT_CHARS,
    MESSAGE_INDEXES,
    MESSAGES_COLLECTION,
    STORED_FINALS_KEY,
    TRACE_FIELD,
    WITH_WEBHOOK,
    AttemptRecord,
    MessageDocument,
    MessageState,
    epoch,
    final_copy_key,
    final_message_id,
    message_for,
    record_change_async,
    task_of_final_message,
)
from dispatcher_service.settings import DispatcherSettings

log = get_logger(__name__)

DELIVERIES = Counter(
    "aitask_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered, retry (another attempt follows), failed (attempts exhausted), "
    "stopped (the receiver answered 410)",
    ["outcome"],
)
# Connections the delivery loop holds to MongoDB at most.
MONGO_CONNECTIONS: Final = 16
# Due ids one round claims at most.
ROUND_LIMIT: Final = 500
# Attempts one bulk write records at most (FerretDB's limit: aitask_common.mongo).
ATTEMPT_BATCH: Final = UPDATE_STATEMENTS_MAX
ROUND_MIN_GAP_SECONDS: Final = 0.02
# Between rounds while the database or Redis is unreachable (not a warning every poll interval).
OUTAGE_PAUSE_SECONDS: Final = 2.0
# Claims the due ids (score <= ARGV[1]), at most ARGV[2], oldest due first, and scores them ARGV[3] (the lease's
# end) in the same step, so no other claim takes them meanwhile.
CLAIM_SCRIPT: Final = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return due
"""
# A claimed message stored as due later than this is not due yet (its set entry was early): it is scored again.
DUE_TOLERANCE_SECONDS: Final = 1.0
# Beyond the HTTP timeout and the DNS one, what a claim's lease allows for before another round may send again.
LEASE_MARGIN_SECONDS: Final = 5.0
JITTER: Final = 0.1
# How often the loop checks that the due set is complete (rebuilding it from MongoDB if not), how often it adds
# every pending message to it anyway (an index write that failed while Redis kept its data), and how many
# messages per read and per Redis write.
RECONCILE_CHECK_SECONDS: Final = 2.0
RECONCILE_EVERY_SECONDS: Final = 300.0
RECONCILE_BATCH: Final = 1000
# Users' secrets kept between rounds at most this long: the delay of a rotation's new secret if Redis missed its mark.
SECRETS_CACHE_SECONDS: Final = 300.0
# The sweep for final messages whose writer died before storing them (every WEBHOOK_SWEEP_SECONDS): how far back
# a new dispatcher looks, how long after a task's final write (the writer's own store comes first), and how many
# tasks per query.
SWEEP_FIRST_LOOKBACK: Final = timedelta(hours=1)
# After Redis lost the due set, the sweep looks this far back: a worker's final message lives only as a due id until
# the loop takes it up, so every final task in the lookback without a stored message is stored then.
SWEEP_REBUILD_LOOKBACK: Final = timedelta(days=7)
SWEEP_SETTLE: Final = timedelta(seconds=10)
SWEEP_BATCH: Final = 200
# The longest Retry-After honoured (a receiver cannot park a message for longer than the schedule's longest step).
RETRY_AFTER_MAX_SECONDS: Final = 36000.0
EXCERPT_BYTES: Final = 1024
USER_AGENT: Final = "aitask-webhooks/1"


class DeliveryRefused(Exception):
    """The message could not be sent at all (its address is refused, or it does not resolve)."""


@dataclass
class Claimed:
    """A message this process claimed and has not started yet (its host is busy)."""

    message: MessageDocument
    host: str
    leased_at: float
    # False: rendered from its task, stored with its first attempt.
    stored: bool


@dataclass
class AttemptWrite:
    """An attempt's record, waiting for the next batch: the MongoDB write (an update of the stored message, or the
    insert of one stored with its first attempt), the update that records the attempt instead if that insert finds
    the message stored meanwhile, and the message's next due time in the due set (None: it leaves the set)."""

    operation: UpdateOne | InsertOne[Any]
    if_stored: UpdateOne | None
    message_id: str
    next_due: float | None
    written: asyncio.Future[None]


class AttemptWriter:
    """Writes attempts in batches: the attempts that ended while the last batch was written go in the next ones
    (each a bulk write to MongoDB of at most ATTEMPT_BATCH, then a Redis pipeline for the due set)."""

    def __init__(self, messages: AsyncCollection[Any], redis: AsyncRedis) -> None:
        self.messages = messages
        self.redis = redis
        self.queued: list[AttemptWrite] = []
        self.ready = asyncio.Event()

    async def write(
        self,
        operation: UpdateOne | InsertOne[Any],
        message_id: str,
        next_due: float | None,
        if_stored: UpdateOne | None = None,
    ) -> None:
        """Record one attempt; returns once it is in MongoDB (raises if that failed: the lease brings the message
        back)."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queued.append(AttemptWrite(operation, if_stored, message_id, next_due, written))
        self.ready.set()
        await written

    async def run(self) -> None:
        """Write what is queued, at most ATTEMPT_BATCH at a time, for ever."""
        while True:
            await self.ready.wait()
            batch, self.queued = self.queued[:ATTEMPT_BATCH], self.queued[ATTEMPT_BATCH:]
            if not self.queued:
                self.ready.clear()
            if batch:
                await self.flush(batch)

    async def flush(self, batch: list[AttemptWrite]) -> None:
        try:
            await self._write(batch)
        except Exception as error:  # noqa: BLE001 - the writer must go on; the lease brings these messages back
            log.warning("webhook attempts not recorded: their lease brings them back", error=repr(error))
            for write in batch:
                if not write.written.done():
                    write.written.set_exception(error)
            return
        stored_finals = {write.message_id: time.time() for write in batch if task_of_final_message(write.message_id)}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for write in batch:
                    if write.next_due is None:
                        pipe.zrem(DUE_KEY, write.message_id)
                    else:
                        pipe.zadd(DUE_KEY, {write.message_id: write.next_due})
                if stored_finals:
                    pipe.zadd(STORED_FINALS_KEY, stored_finals)
                await pipe.execute()
        except RedisError as error:
            # MongoDB has them: once their lease passes, a claim reads them and drops or re-scores them.
            log.warning("webhook due set not updated after attempts", error=str(error))
        for write in batch:
            if not write.written.done():
                write.written.set_result(None)

    async def _write(self, batch: list[AttemptWrite]) -> None:
        try:
            await self.messages.bulk_write([write.operation for write in batch], ordered=False)
        except BulkWriteError as error:
            failed = [batch[failure["index"]] for failure in error.details["writeErrors"]]
            if any(
                failure["code"] != DUPLICATE_KEY or write.if_stored is None
                for failure, write in zip(error.details["writeErrors"], failed, strict=True)
            ):
                raise
            # Stored meanwhile (the sweep after Redis lost the due set, or another dispatcher once this claim's
            # lease passed): the attempt joins the stored message.
            await self.messages.bulk_write([write.if_stored for write in failed if write.if_stored], ordered=False)


class WebhookDelivery:
    """The delivery loop; `start` runs it in a daemon thread."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        self.lease = timedelta(
            seconds=settings.webhook_timeout_seconds + settings.webhook_dns_timeout_seconds + LEASE_MARGIN_SECONDS
        )
        self.in_flight: Tally[str] = Tally()
        self.running: set[asyncio.Task[None]] = set()
        # Claimed messages waiting for their host to have room, oldest due first.
        self.waiting: list[Claimed] = []
        # Ids claimed by this process and not settled yet (waiting, sending or being recorded): a claim that
        # returns one again (its lease passed while its record was slow) leaves it to its delivery.
        self.active: set[str] = set()
        # Users' secrets with the rotation mark they were read under (SECRET_MARKS_KEY): a round re-reads a user whose
        # mark moved, so a rotation's new secret signs from the next round on (the old one still verifies meanwhile).
        self.secrets_cache: TTLCache[str, tuple[bytes | str | None, UserSecrets]] = TTLCache(
            maxsize=10_000, ttl=SECRETS_CACHE_SECONDS
        )
        # A message stored at most this long ago is still in STORED_FINALS_KEY when the sweep that covers its task's
        # final write (one interval and SWEEP_SETTLE after it, at the latest) asks, with an interval to spare.
        self.stored_finals_seconds = 3 * settings.webhook_sweep_seconds + SWEEP_SETTLE.total_seconds()

    def start(self) -> None:
        """Run the loop in a daemon thread (it dies with the process; a message it was sending is sent again)."""
        threading.Thread(target=self._run_niced, name="webhook-delivery", daemon=True).start()

    def _run_niced(self) -> None:
        # On Linux a thread's priority is its own (and the threads it starts inherit it): only deliveries yield.
        if self.settings.webhook_delivery_nice:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.settings.webhook_delivery_nice)
            except OSError as error:
                log.warning("webhook delivery runs at the process's priority", error=str(error))
        asyncio.run(self.run())

    async def run(self) -> None:
        """Look for due messages every WEBHOOK_POLL_SECONDS, for ever."""
        settings = self.settings
        # A round's reads go out concurrently; this many connections bound what they ask of the database at once
        # (one run with ~100 concurrent reads from here saw FerretDB stop answering every client).
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            **client_options(settings, "dispatcher-webhooks"), maxPoolSize=MONGO_CONNECTIONS
        )
        database = mongo[settings.mongo_database]
        self.messages: AsyncCollection[Any] = database[MESSAGES_COLLECTION]
        self.tasks: AsyncCollection[Any] = database[COLLECTION]
        self.redis = async_redis_client(settings)
        self.claim_script = self.redis.register_script(CLAIM_SCRIPT)
        self.writer = AttemptWriter(self.messages, self.redis)
        writing = asyncio.create_task(self.writer.run())
        self.secrets = WebhookSecretStore(database, cipher(settings))
        # aiohttp, not httpx: httpcore's pool checks every pooled connection's socket on each request (a third of
        # the loop's CPU in a profile), and keys connections by address alone, where aiohttp's key also holds the
        # TLS name, so a connection verified for one host name is never reused for another on the same address.
        self.tls = tls_context(settings.webhook_ca_file)
        timeout = settings.webhook_timeout_seconds
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.webhook_max_concurrency),
            timeout=aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout),
            trust_env=False,
        )
        self.wake = asyncio.Event()
        indexed = False
        self.swept_until = utcnow() - SWEEP_FIRST_LOOKBACK
        self.sweep_now = False
        next_sweep = next_check = next_reconcile = 0.0
        while True:
            try:
                if not indexed:
                    for keys in MESSAGE_INDEXES:
                        await self.messages.create_index(keys)
                    indexed = True
                self.wake.clear()  # a delivery ending from here on brings the next round forward
                if time.monotonic() >= next_check:
                    every = time.monotonic() >= next_reconcile
                    if await self.reconcile(every):
                        next_reconcile = time.monotonic() + RECONCILE_EVERY_SECONDS
                    next_check = time.monotonic() + RECONCILE_CHECK_SECONDS
                if self.sweep_now or time.monotonic() >= next_sweep:
                    self.sweep_now = False
                    await self.sweep()
                    next_sweep = time.monotonic() + settings.webhook_sweep_seconds
                await self.round()
            except PyMongoError as error:
                log.warning("webhook delivery round failed: database unreachable", error=str(error))
                await asyncio.sleep(OUTAGE_PAUSE_SECONDS)
            except RedisError as error:
                log.warning("webhook delivery round failed: Redis unreachable", error=str(error))
                await asyncio.sleep(OUTAGE_PAUSE_SECONDS)
            # The next round comes when a delivery ends (its host has room again) or after the poll interval.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), settings.webhook_poll_seconds)
            await asyncio.sleep(ROUND_MIN_GAP_SECONDS)  # deliveries ending together share one round
            if writing.done():  # never, unless a bug: say which, and write again
                log.error("webhook attempt writer stopped", error=repr(writing.exception()))
                writing = asyncio.create_task(self.writer.run())

    async def reconcile(self, every_time: bool) -> bool:
        """Add every pending message to the due set, with its stored due time, unless the set is complete and
        `every_time` is false; whether it did. Reads in batches; an id already in the set keeps its score (it may
        be leased)."""
        complete = await self.redis.exists(DUE_COMPLETE_KEY)
        if not every_time and complete:
            return False
        if not complete:
            # Ids of final messages not stored yet were lost with the set: the sweep stores them.
            self.swept_until = min(self.swept_until, utcnow() - SWEEP_REBUILD_LOOKBACK)
            self.sweep_now = True
        started = time.monotonic()
        pending = self.messages.find({"state": MessageState.PENDING.value}, {"next_attempt_at": True})
        batch: dict[str, float] = {}
        count = 0
        async for message in pending.batch_size(RECONCILE_BATCH):
            batch[message["_id"]] = epoch(message["next_attempt_at"])
            if len(batch) >= RECONCILE_BATCH:
                await self.redis.zadd(DUE_KEY, batch, nx=True)
                count += len(batch)
                batch = {}
        if batch:
            await self.redis.zadd(DUE_KEY, batch, nx=True)
            count += len(batch)
        # Marked complete only now: a rebuild cut short is done again at the next check.
        await self.redis.set(DUE_COMPLETE_KEY, "1")
        log.info(
            "webhook due set reconciled from MongoDB",
            pending=count,
            rebuilt=not every_time,
            seconds=round(time.monotonic() - started, 2),
        )
        return True

    async def sweep(self) -> None:
        """Store the final message of every task that turned final since the last sweep (and SWEEP_SETTLE_SECONDS
        ago) with a webhook but neither a stored message nor a due id: its writer died, or Redis or the database
        failed, between the task's write and the message's. Started and progress messages are best effort; final
        ones are not."""
        since, until = self.swept_until, utcnow() - SWEEP_SETTLE
        batch: list[Any] = []
        # One equality per bucket (FerretDB hands it to PostgreSQL's index); the range only trims its edges.
        for bucket in final_buckets_between(since, until):
            finished = self.tasks.find(
                {FINAL_BUCKETS_FIELD: bucket, "updated": {"$gte": since, "$lt": until}, **WITH_WEBHOOK}
            )
            async for document in finished:
                batch.append(document)
                if len(batch) >= SWEEP_BATCH:
                    await self._record_missing(batch)
                    batch = []
        await self._record_missing(batch)
        self.swept_until = until
        await self.redis.zremrangebyscore(STORED_FINALS_KEY, "-inf", time.time() - self.stored_finals_seconds)

    async def _record_missing(self, documents: list[Any]) -> None:
        ids = [final_message_id(document["_id"]) for document in documents]
        if not ids:
            return
        # A due id without a stored message is a worker's final message waiting its turn: the claim stores it. An
        # id this loop stored lately needs no read; only the others are read from MongoDB.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zmscore(DUE_KEY, ids)
            pipe.zmscore(STORED_FINALS_KEY, ids)
            due_scores, stored_scores = await pipe.execute()
        known = {
            message_id
            for message_id, due, stored in zip(ids, due_scores, stored_scores, strict=True)
            if due is not None or stored is not None
        }
        stored = await self.read_by_id([message_id for message_id in ids if message_id not in known], {"_id": True})
        for document, message_id in zip(documents, ids, strict=True):
            if message_id in known or message_id in stored or message_for(document, EventKind.FINAL) is None:
                continue
            log.warning("final webhook message was missing; stored now", task_id=document["_id"])
            await record_change_async(self.messages, document, EventKind.FINAL, self.redis)

    async def round(self) -> None:
        """Renew the leases of claimed messages still waiting, start those whose host has room, then claim as many
        due ids as there is room for, read their messages (one query by id) and start those whose host has room."""
        now = time.time()
        await self.renew_waiting(now)
        self.start_waiting()
        room = min(ROUND_LIMIT, self.settings.webhook_max_concurrency - len(self.running) - len(self.waiting))
        if room <= 0:
            return
        lease_end = now + self.lease.total_seconds()
        claimed: list[bytes] = await self.claim_script(keys=[DUE_KEY], args=[now, room, lease_end])
        ids = [raw.decode() for raw in claimed]
        ids = [message_id for message_id in ids if message_id not in self.active]
        if not ids:
            return
        copies = await self.take_final_copies(ids)
        found = await self.read_by_id([message_id for message_id in ids if message_id not in copies])
        stored = set(found)
        found |= {message["_id"]: message for message in copies.values() if message is not None}
        rendered = found.keys() | copies.keys()
        found |= await self.render_finals([message_id for message_id in ids if message_id not in rendered])
        gone: list[str] = []
        not_due: dict[str, float] = {}
        claims: list[Claimed] = []
        for message_id in ids:  # oldest due first, as claimed
            message = found.get(message_id)
            if message is None or message["state"] != MessageState.PENDING.value:
                gone.append(message_id)
                continue
            due = epoch(message["next_attempt_at"])
            if due > now + DUE_TOLERANCE_SECONDS:
                not_due[message_id] = due
                continue
            claims.append(Claimed(message, httpx.URL(message["url"]).host, now, message_id in stored))
        if gone or not_due:
            async with self.redis.pipeline(transaction=False) as pipe:
                if gone:
                    pipe.zrem(DUE_KEY, *gone)
                if not_due:
                    pipe.zadd(DUE_KEY, not_due)
                await pipe.execute()
        await self.load_secrets({claimed.message["user_id"] for claimed in claims})
        # Only now are they this process's (a failure above leaves them to their lease).
        self.active.update(claimed.message["_id"] for claimed in claims)
        self.waiting.extend(claims)
        self.start_waiting()

    async def take_final_copies(self, message_ids: list[str]) -> dict[str, MessageDocument | None]:
        """The final messages among `message_ids` whose task a worker left a copy of, rendered from it (None: the
        task makes no message), by id. The copies are taken: a claim that comes back after this one's lease reads
        MongoDB, where the message may be stored by then."""
        finals = {
            message_id: task_id
            for message_id in message_ids
            if (task_id := task_of_final_message(message_id)) is not None
        }
        if not finals:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in finals.values():
                pipe.getdel(final_copy_key(task_id))
            copies: list[bytes | None] = await pipe.execute()
        rendered: dict[str, MessageDocument | None] = {}
        for message_id, copy in zip(finals, copies, strict=True):
            try:
                task = bson.decode(copy, self.tasks.codec_options) if copy is not None else None
            except bson.errors.BSONError:  # not a worker's copy: the claim reads MongoDB instead
                log.warning("unreadable copy of a final task ignored", message_id=message_id)
                continue
            if task is not None:
                rendered[message_id] = message_for(task, EventKind.FINAL, task.pop(TRACE_FIELD, None))
        return rendered

    async def render_finals(self, message_ids: list[str]) -> dict[str, Any]:
        """The final messages among `message_ids` that a worker only indexed, rendered from their tasks as stored
        now, by id (a task deleted, or whose webhook stopped, makes none); each is stored with its first attempt."""
        task_ids = [task_id for task_id in map(task_of_final_message, message_ids) if task_id is not None]
        found = await asyncio.gather(*(self._final_task(task_id) for task_id in task_ids))
        rendered = (message_for(documents[0], EventKind.FINAL) for documents in found if documents)
        return {message["_id"]: message for message in rendered if message is not None}

    async def _final_task(self, task_id: str) -> list[Any]:
        """The task a final message is rendered from ([] when gone): by id alone, since the message's id names no
        user (on a sharded MongoDB this read asks every shard)."""
        return await self.tasks.find({"_id": task_id}).to_list()

    async def load_secrets(self, user_ids: set[str]) -> None:
        """Read the secrets of these users that are not cached, concurrently, before their messages take a slot
        of their host (best effort: a delivery reads what is missing itself)."""
        users = list(user_ids)
        if not users:
            return
        # Each mark is read before the secrets it is kept with: a rotation in between leaves a mark that moves.
        marks: list[bytes | str | None] = await self.redis.hmget(SECRET_MARKS_KEY, users)
        missing = {
            user_id: mark
            for user_id, mark in zip(users, marks, strict=True)
            if (cached := self.secrets_cache.get(user_id)) is None or cached[0] != mark
        }
        loaded = await asyncio.gather(*(self.secrets.get(user_id) for user_id in missing), return_exceptions=True)
        for (user_id, mark), secrets in zip(missing.items(), loaded, strict=True):
            if isinstance(secrets, UserSecrets):
                self.secrets_cache[user_id] = (mark, secrets)

    async def read_by_id(self, ids: list[str], projection: dict[str, bool] | None = None) -> dict[str, Any]:
        """The stored messages of `ids` (those that exist), by id: one equality read each, concurrently (FerretDB
        answers `_id` equality from its index but `$in` by reading the whole collection)."""
        found = await asyncio.gather(
            *(self.messages.find({"_id": message_id}, projection).to_list() for message_id in ids)
        )
        return {batch[0]["_id"]: batch[0] for batch in found if batch}

    async def renew_waiting(self, now: float) -> None:
        """Push the lease of claimed messages that have waited half of it a whole lease ahead again."""
        half = self.lease.total_seconds() / 2
        stale = [claimed for claimed in self.waiting if now - claimed.leased_at > half]
        if not stale:
            return
        await self.redis.zadd(DUE_KEY, {claimed.message["_id"]: now + self.lease.total_seconds() for claimed in stale})
        for claimed in stale:
            claimed.leased_at = now

    def start_waiting(self) -> None:
        """Start the waiting messages whose host has room, oldest due first."""
        left: list[Claimed] = []
        for claimed in self.waiting:
            if (
                len(self.running) >= self.settings.webhook_max_concurrency
                or self.in_flight[claimed.host] >= self.settings.webhook_per_host_concurrency
            ):
                left.append(claimed)
                continue
            self.in_flight[claimed.host] += 1
            task = asyncio.create_task(self.deliver(claimed))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
        self.waiting = left

    async def deliver(self, claimed: Claimed) -> None:
        """One attempt, then its record and the message's next step. The host's slot is free again once the
        attempt ends: the record's write (batched) holds no receiver's slot."""
        message, host = claimed.message, claimed.host
        try:
            try:
                attempt, retry_after = await self.attempt(message)
            finally:
                self.in_flight[host] -= 1
                if self.in_flight[host] <= 0:
                    del self.in_flight[host]
                self.wake.set()
            await self.settle(message, attempt, retry_after, claimed.stored)
        except Exception as error:  # noqa: BLE001 - the lease brings the message back; the loop must go on
            log.error("webhook delivery crashed", message_id=message["_id"], error=repr(error))
        finally:
            self.active.discard(message["_id"])
            self.wake.set()

    async def attempt(self, message: MessageDocument) -> tuple[AttemptRecord, float | None]:
        """Send once: the attempt as the log keeps it (next_attempt_at still unset), and any Retry-After."""
        at = utcnow()
        started = time.monotonic()
        status_code, error, excerpt, retry_after = 0, "", "", None
        try:
            # The client's timeouts bound the connect and each read; this bounds the whole attempt (trickled bytes).
            async with asyncio.timeout(self.lease.total_seconds() - LEASE_MARGIN_SECONDS):
                with job_span(
                    "webhook delivery",
                    message.get("trace"),
                    task_id=message["task_id"],
                    message_id=message["_id"],
                    attempt=message["attempt_count"] + 1,
                ):
                    status_code, excerpt, retry_after = await self.post(message)
        except DeliveryRefused as refused:
            error = str(refused)
        except TimeoutError:  # aiohttp's connect and read timeouts too
            error = f"timed out after {self.settings.webhook_timeout_seconds:g} s"
        except aiohttp.ClientError as failure:
            error = f"{type(failure).__name__}: {failure}"[:EXCERPT_CHARS]
        latency_ms = int((time.monotonic() - started) * 1000)
        record: AttemptRecord = {
            "at": at,
            "status_code": status_code,
            "error": error,
            "latency_ms": latency_ms,
            "next_attempt_at": None,
            "response_excerpt": excerpt,
        }
        return record, retry_after

    async def post(self, message: MessageDocument) -> tuple[int, str, float | None]:
        """POST the signed message to the checked address: (status, excerpt, Retry-After seconds)."""
        url = httpx.URL(message["url"])
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await allowed_addresses(
                url.host, port, self.settings.webhook_dns_timeout_seconds, self.settings.webhook_allow_private
            )
        except AddressRefused as error:
            raise DeliveryRefused(str(error)) from error
        cached = self.secrets_cache.get(message["user_id"])
        if cached is not None:
            secrets = cached[1]
        else:  # the round's read failed: read now, kept under no mark (the next round reads it again)
            secrets = await self.secrets.get(message["user_id"])
            self.secrets_cache[message["user_id"]] = (None, secrets)
        timestamp = datetime.now(UTC)  # `sign` reads a naive or aware time as UTC
        body = message["body"]
        signatures = " ".join(
            Webhook(secret).sign(message["_id"], timestamp, body) for secret in secrets.signing(utcnow())
        )
        headers = {
            "host": url.netloc.decode("ascii"),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message["_id"],
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signatures,
        }
        https = url.scheme == "https"
        target = url.copy_with(host=str(addresses[0]))
        async with self.http.post(
            yarl.URL(str(target), encoded=True),
            data=body.encode(),
            headers=headers,
            allow_redirects=False,
            ssl=self.tls if https else True,
            server_hostname=url.raw_host.decode("ascii") if https else None,
        ) as response:
            excerpt = b""
            while len(excerpt) < EXCERPT_BYTES and (chunk := await response.content.read(EXCERPT_BYTES - len(excerpt))):
                excerpt += chunk
            status, retry_after = response.status, retry_after_seconds(response.status, response.headers)
        # Leaving the block closes a connection whose answer was not read whole: nothing more is read from it.
        return status, excerpt.decode("utf-8", "replace")[:EXCERPT_CHARS], retry_after

    async def settle(
        self, message: MessageDocument, attempt: AttemptRecord, retry_after: float | None, stored: bool
    ) -> None:
        """Record the attempt (in the writer's next batch: an update of the stored message, or the message's
        insert with it), and deliver, stop, fail or schedule the message."""
        status = attempt["status_code"]
        number = message["attempt_count"] + 1
        changes: dict[str, Any]
        if 200 <= status < 300:
            outcome = MessageState.DELIVERED
            changes = {"state": outcome.value, "delivered": utcnow()}
        elif status == 410:
            outcome = MessageState.STOPPED
            changes = {"state": outcome.value}
            await self.stop_task(message["task_id"])
        else:
            delay = next_delay(self.settings.webhook_retry_schedule, number, retry_after)
            if delay is None:
                outcome = MessageState.FAILED
                changes = {"state": outcome.value}
            else:
                outcome = MessageState.PENDING
                attempt["next_attempt_at"] = utcnow() + timedelta(seconds=delay)
                changes = {"next_attempt_at": attempt["next_attempt_at"]}
        update = UpdateOne(
            {"_id": message["_id"]}, {"$inc": {"attempt_count": 1}, "$set": changes, "$push": {"attempts": attempt}}
        )
        next_due = epoch(attempt["next_attempt_at"]) if attempt["next_attempt_at"] is not None else None
        if stored:
            await self.writer.write(update, message["_id"], next_due)
        else:
            first = {**message, **changes, "attempt_count": number, "attempts": [attempt]}
            await self.writer.write(InsertOne(first), message["_id"], next_due, if_stored=update)
        DELIVERIES.labels("retry" if outcome is MessageState.PENDING else outcome.value).inc()
        log.info(
            "webhook attempt",
            message_id=message["_id"],
            task_id=message["task_id"],
            attempt=number,
            status_code=status,
            error=attempt["error"],
            latency_ms=attempt["latency_ms"],
            outcome=outcome.value,
        )

    async def stop_task(self, task_id: str) -> None:
        """A 410: no more messages for this task, not even those already stored."""
        await self.tasks.update_one({"_id": task_id}, {"$set": {"webhook_stopped": True}})
        await self.messages.update_many(
            {"task_id": task_id, "state": MessageState.PENDING.value}, {"$set": {"state": MessageState.STOPPED.value}}
        )


def tls_context(ca_file: str) -> ssl.SSLContext:
    """What https deliveries verify against: the public authorities httpx trusts, and those of `ca_file` if set.
    The name checked is the URL's host (sent as SNI), not the address connected to."""
    context = httpx.create_ssl_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def next_delay(schedule: list[float], attempts_made: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after `attempts_made` failed ones (the schedule's step, jittered, never
    sooner than Retry-After), or None when the schedule is spent."""
    if attempts_made > len(schedule):
        return None
    delay = schedule[attempts_made - 1] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - jitter, not crypto
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_MAX_SECONDS))
    return delay


def retry_after_seconds(status: int, headers: Mapping[str, str]) -> float | None:
    """A 429's or 503's Retry-After, in seconds (delta or HTTP date); None otherwise."""
    value = headers.get("retry-after")
    if status not in (429, 503) or not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now().astimezone()).total_seconds())
    except (TypeError, ValueError):
        return None


class WebhookBacklogCollector(Collector):
    """Undelivered webhook messages and the age of the oldest, read from MongoDB at scrape time."""

    def __init__(self, messages: Collection[Any]) -> None:
        self.messages = messages

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = GaugeMetricFamily("aitask_webhook_backlog", "Webhook messages not delivered yet (pending)")
        oldest = GaugeMetricFamily(
            "aitask_webhook_oldest_undelivered_age_seconds", "Age of the oldest pending webhook message (0: none)"
        )
        try:
            pending = {"state": MessageState.PENDING.value}
            backlog.add_metric([], self.messages.count_documents(pending))
            first = self.messages.find_one(pending, {"created": True}, sort=[("created", 1)])
            oldest.add_metric([], (utcnow() - first["created"]).total_seconds() if first else 0.0)
        except PyMongoError:  # the database is down: the health check says so
            pass
        yield backlog
        yield oldest
