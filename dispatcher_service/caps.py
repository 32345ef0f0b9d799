"""Per-upstream caps: at most N calls in flight and at most R calls a second to one provider or one model,
enforced across every worker of every dispatcher through Redis.

`UPSTREAM_CAPS` (settings.py) names the caps, by provider (`volcengine`) or by model (`volcengine/<model>`). A
call that may cost money (Generate, SubmitJob) takes a slot of each cap that applies, in one Lua script (all or
none), before it goes out:
- concurrency: a sorted set of slot holders scored by when their lease expires (the call's longest possible
  duration), so a worker killed mid-call (SIGKILL) frees its slot when the lease runs out, never holding it
  for good. A finished call gives its slot back at once and wakes the task waiting longest for that cap.
- rate: a GCRA (the time the next call is allowed), allowing a burst of one second's worth.

A task that finds a cap full holds no worker while it waits: it goes back to pending (the attempt does not
count) and into the cap's waiting line, from which a freed slot wakes it (its job enqueued at the front of its
queue); a job `cap_recheck_seconds` later covers a wake that never comes (its waker killed). A task held by
the rate waits exactly until its turn.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from redis import Redis

from aitask_common.queue_shards import shared
from dispatcher_service.settings import DispatcherSettings, UpstreamCap

CAP_KEY_PREFIX = "aitask:cap:"
# Waiting lines hold "task_id priority user_id" members (a task id and a priority have no space) scored by when
# the task first waited; members from before the user was kept are "task_id priority".
_SEPARATOR = " "


def _holders_key(cap: str) -> str:
    return f"{shared(CAP_KEY_PREFIX)}{cap}:holders"


def _rate_key(cap: str) -> str:
    return f"{shared(CAP_KEY_PREFIX)}{cap}:next"


def _waiting_key(cap: str) -> str:
    return f"{shared(CAP_KEY_PREFIX)}{cap}:waiting"


# KEYS per cap: holders, rate; ARGV now, lease until, token, then per cap: concurrency, interval (0: none).
# Returns {1} when every slot is taken, else {0, index of the full cap (1-based), seconds to wait ('0' when it
# is a concurrency cap: wait for a wake)}.
_ACQUIRE = """
local now, lease_until, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local caps = #KEYS / 2
local allowed = {}
for i = 1, caps do
  local holders, rate = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, interval = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
    if redis.call('ZCARD', holders) >= limit then return {0, i, '0'} end
  end
  if interval > 0 then
    local tat = math.max(tonumber(redis.call('GET', rate) or '0'), now)
    local tolerance = math.max(1.0 - interval, 0)
    if tat - now > tolerance then return {0, i, tostring(tat - now - tolerance)} end
    allowed[i] = tat + interval
  end
end
for i = 1, caps do
  if tonumber(ARGV[2 + 2 * i]) > 0 then
    redis.call('ZADD', KEYS[2 * i - 1], lease_until, token)
    redis.call('EXPIRE', KEYS[2 * i - 1], math.ceil(lease_until - now) + 1)
  end
  if allowed[i] then
    redis.call('SET', KEYS[2 * i], tostring(allowed[i]), 'PX', math.ceil((allowed[i] - now) * 1000) + 1000)
  end
end
return {1}
"""

# KEYS per cap: holders, waiting; ARGV token. Gives the slots back and pops, per cap, the task waiting longest.
_RELEASE = """
local woken = {}
for i = 1, #KEYS / 2 do
  if redis.call('ZREM', KEYS[2 * i - 1], ARGV[1]) == 1 then
    local first = redis.call('ZPOPMIN', KEYS[2 * i])
    if first[1] then woken[#woken + 1] = first[1] end
  end
end
return woken
"""


@dataclass(frozen=True)
class Slot:
    """The slots one call holds, given back by `UpstreamCaps.release`."""

    caps: tuple[str, ...]
    token: str


@dataclass(frozen=True)
class CapFull:
    """Why a call may not go out yet: the cap that is full, and how long to wait (None: until a slot is freed)."""

    cap: str
    wait_seconds: float | None


class UpstreamCaps:
    """The shared caps, as one worker process uses them."""

    def __init__(self, redis: Redis, settings: DispatcherSettings, lease_seconds: float) -> None:
        self.redis = redis
        self.caps = settings.upstream_caps
        # A slot's lease: the longest a call can take (its gRPC deadline).
        self.lease_seconds = lease_seconds

    def applying(self, provider: str, model: str) -> list[tuple[str, UpstreamCap]]:
        """The caps a call to provider/model counts against."""
        names = (provider, f"{provider}/{model}")
        return [(name, self.caps[name]) for name in names if name in self.caps]

    def acquire(self, provider: str, model: str) -> Slot | CapFull | None:
        """A slot of every cap that applies (None when none does), or the cap that is full."""
        applying = self.applying(provider, model)
        if not applying:
            return None
        token = uuid.uuid4().hex
        now = time.time()
        keys = [key for name, _ in applying for key in (_holders_key(name), _rate_key(name))]
        args: list[float | str] = [now, now + self.lease_seconds, token]
        for _, cap in applying:
            args += [cap.concurrency, 1.0 / cap.per_second if cap.per_second else 0.0]
        reply = self.redis.eval(_ACQUIRE, len(keys), *keys, *args)
        if int(reply[0]):
            return Slot(tuple(name for name, _ in applying), token)
        full, wait = applying[int(reply[1]) - 1][0], float(reply[2])
        return CapFull(full, wait or None)

    def wait_in_line(self, cap: str, task_id: str, priority: str, user_id: str) -> None:
        """Put the task in the cap's waiting line (kept where it was if it already waits)."""
        member = _SEPARATOR.join((task_id, priority, user_id))
        self.redis.zadd(_waiting_key(cap), {member: time.time()}, nx=True)

    def release(self, slot: Slot) -> list[tuple[str, str, str | None]]:
        """Give the slots back; the (task id, priority, user) of each task woken to take one (the user None for
        a task that waited from before it was kept)."""
        keys = [key for name in slot.caps for key in (_holders_key(name), _waiting_key(name))]
        woken = self.redis.eval(_RELEASE, len(keys), *keys, slot.token)
        return [_waiting_task(member.decode() if isinstance(member, bytes) else member) for member in woken]


def _waiting_task(member: str) -> tuple[str, str, str | None]:
    task_id, priority, *user = member.split(_SEPARATOR, 2)
    return task_id, priority, user[0] if user else None


def cap_status(redis: Redis, caps: dict[str, UpstreamCap]) -> dict[str, dict[str, float]]:
    """Per configured cap: calls in flight (live leases), its limit, and tasks waiting for a slot."""
    now = time.time()
    with redis.pipeline(transaction=False) as pipe:
        for name in caps:
            pipe.zcount(_holders_key(name), now, "+inf")
            pipe.zcard(_waiting_key(name))
        replies = pipe.execute()
    return {
        name: {
            "in_flight": replies[2 * index],
            "concurrency": cap.concurrency,
            "per_second": cap.per_second,
            "waiting": replies[2 * index + 1],
        }
        for index, (name, cap) in enumerate(caps.items())
    }
