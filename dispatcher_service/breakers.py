"""Circuit breakers per provider instance (for each model it serves) and per (provider, model), their state in Redis
so every worker of every dispatcher shares it (with queue shards, each shard its own: aitask_common/breaker_state.py).

A breaker is closed (calls go through) until, within `breaker_window_seconds`, at least its minimum number of
calls were made and `breaker_failure_ratio` of them failed: it opens. While open no call goes through: a task
for it waits, pending, re-checked once the cooldown is over, with no upstream call and no attempt used. After
`breaker_cooldown_seconds` it is half-open: `breaker_probe_calls` calls go through as probes; one failure opens
it again, that many successes close it. A probe lost with its worker (SIGKILL mid-call) is issued again once
the half-open phase has lasted a cooldown, so a breaker never stays half-open for good.

What counts as a failure: a retryable upstream error (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED: a 5xx,
a 429, a timeout) and an instance that did not answer. A sustained run of 429s opens the breaker too: the cooldown
gives the vendor the pause it asks for, which per-task backoff alone does not. An error about the request itself
(a 400) says the upstream works: it counts as a successful call.

A worker that found a breaker closed keeps the successes that follow to itself for up to CLOSED_CACHE_SECONDS and
counts them in one script, with their own times, whose answer also renews what it knows of the breaker, so admit
need not ask while calls flow: a closed breaker costs each worker at most one script per call, and about four a
second when its calls come faster. A failure is counted at once, with the successes kept before it. Successes a
worker held when it died are never counted: the window's failure ratio comes out higher by at most half a second
of one worker's calls.

Each transition is one Lua script, so two workers never both make it; the one that does logs it and counts it
in `aitask_breaker_transitions_total`. `aitask_breaker_state` (read at scrape time) and the queue tools
(`python -m dispatcher_service.queue_admin breakers`) show where every breaker stands.
"""

from __future__ import annotations

import time
import uuid

from prometheus_client import Counter
from redis import Redis

from aitask_common.breaker_state import BREAKER_IDLE_SECONDS, BreakerState, breaker_keys
from aitask_common.logging import get_logger
from aitask_common.provider_errors import RETRYABLE_CODES
from dispatcher_service.settings import DispatcherSettings

log = get_logger(__name__)

# A worker that found a breaker closed lets calls through without asking Redis again for this long, and keeps the
# successes that follow this long before counting them: round trips saved on every call in the usual case, at the
# price of noticing another worker's open breaker this much later.
CLOSED_CACHE_SECONDS = 0.5

# gRPC codes from a provider that count against a breaker: the retryable ones.
FAILURE_CODES = RETRYABLE_CODES

BREAKER_TRANSITIONS = Counter(
    "aitask_breaker_transitions_total", "Circuit breaker transitions, by breaker scope and new state", ["scope", "to"]
)


# KEYS state hash; ARGV now, cooldown, probes, idle expiry. Returns {admitted 0/1, state, seconds to wait
# (a string: Lua numbers become integers), transition or ''}.
_ADMIT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {1, 'closed', '0', ''} end
local now, cooldown, probes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local until_ = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if state == 'open' then
  if now < until_ then return {0, 'open', tostring(until_ - now), ''} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'until', now + cooldown, 'probes', probes - 1, 'successes', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {1, 'half_open', '0', 'half_open'}
end
if tonumber(redis.call('HGET', KEYS[1], 'probes') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'probes', -1)
  return {1, 'half_open', '0', ''}
end
if now >= until_ then
  -- The probes were issued a cooldown ago and not all came back (a worker died mid-call): issue them again.
  redis.call('HSET', KEYS[1], 'until', now + cooldown, 'probes', probes - 1)
  return {1, 'half_open', '0', ''}
end
return {0, 'half_open', tostring(until_ - now), ''}
"""

# KEYS state hash, calls, failures, index; ARGV now, failed 0/1, call id, window, min calls, ratio, cooldown,
# probes, idle expiry, scope, then the times of earlier successes made while the breaker was closed (counted only
# if it still is: an open breaker started a new window). Returns {state, transition or ''}.
_RECORD = """
local now, failed = tonumber(ARGV[1]), ARGV[2] == '1'
local window, cooldown, expiry = tonumber(ARGV[4]), tonumber(ARGV[7]), ARGV[9]
redis.call('SADD', KEYS[4], ARGV[10])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local function open()
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + cooldown, 'since', now)
  redis.call('EXPIRE', KEYS[1], expiry)
  redis.call('DEL', KEYS[2], KEYS[3])
  return {'open', 'open'}
end
if state == 'open' then return {'open', ''} end
if state == 'half_open' then
  if failed then return open() end
  if redis.call('HINCRBY', KEYS[1], 'successes', 1) >= tonumber(ARGV[8]) then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'since', now)
    redis.call('EXPIRE', KEYS[1], expiry)
    return {'closed', 'closed'}
  end
  return {'half_open', ''}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
for index = 11, #ARGV do
  if tonumber(ARGV[index]) > now - window then redis.call('ZADD', KEYS[2], ARGV[index], ARGV[3] .. ':' .. index) end
end
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('EXPIRE', KEYS[2], math.ceil(window) + 1)
if failed then
  redis.call('ZADD', KEYS[3], now, ARGV[3])
  redis.call('EXPIRE', KEYS[3], math.ceil(window) + 1)
  local calls = redis.call('ZCARD', KEYS[2])
  if calls >= tonumber(ARGV[5]) and redis.call('ZCARD', KEYS[3]) / calls >= tonumber(ARGV[6]) then
    return open()
  end
end
return {'closed', ''}
"""


class Breakers:
    """The breakers a queue shard's workers share (aitask_common/breaker_state.py), as one worker process uses them."""

    def __init__(self, redis: Redis, settings: DispatcherSettings, shard: int = 0) -> None:
        self.redis = redis
        self.settings = settings
        self.shard = shard
        # scope -> monotonic time until which it is taken as closed without asking Redis.
        self._closed_until: dict[str, float] = {}
        # scope -> times (epoch seconds) of the successes not yet counted.
        self._successes: dict[str, list[float]] = {}

    def admit(self, scope: str) -> float | None:
        """None if a call may go through `scope` now (a half-open breaker's probe among them), else how many
        seconds until it should be asked again."""
        if self._closed_until.get(scope, 0.0) > time.monotonic():
            return None
        s = self.settings
        admitted, state, wait, transition = self.redis.eval(
            _ADMIT, 1, breaker_keys(scope, self.shard)[0], time.time(), s.breaker_cooldown_seconds,
            s.breaker_probe_calls, BREAKER_IDLE_SECONDS,
        )  # fmt: skip
        if transition:
            self._transitioned(scope, BreakerState.HALF_OPEN)
        if state == b"closed":
            self._closed_until[scope] = time.monotonic() + CLOSED_CACHE_SECONDS
        if int(admitted):
            return None
        seconds = float(wait)
        if state == b"half_open":
            # Probes are out: their outcome comes soon, so ask again sooner than the probe deadline.
            seconds = min(seconds, s.provider_recheck_seconds)
        return max(seconds, 0.1)

    def record(self, scope: str, failed: bool, min_calls: int) -> None:
        """Count one finished call through `scope`; it may open or close the breaker. A success through a breaker
        this worker found closed is kept and counted with the next ones (see the module's docstring)."""
        # Kept while the breaker is known closed for a while yet; in the second half of that while, counted with
        # the ones before, and the state the script returns keeps the breaker known: admit need not ask.
        if not failed and self._closed_until.get(scope, 0.0) - time.monotonic() > CLOSED_CACHE_SECONDS / 2:
            self._successes.setdefault(scope, []).append(time.time())
            return
        earlier = self._successes.pop(scope, [])
        s = self.settings
        state, transition = self.redis.eval(
            _RECORD, 4, *breaker_keys(scope, self.shard), time.time(), int(failed), uuid.uuid4().hex,
            s.breaker_window_seconds, min_calls, s.breaker_failure_ratio, s.breaker_cooldown_seconds,
            s.breaker_probe_calls, BREAKER_IDLE_SECONDS, scope, *earlier,
        )  # fmt: skip
        if state == b"closed":
            self._closed_until[scope] = time.monotonic() + CLOSED_CACHE_SECONDS
        else:
            self._closed_until.pop(scope, None)
        if transition:
            self._transitioned(scope, BreakerState(transition.decode()))

    def _transitioned(self, scope: str, to: BreakerState) -> None:
        BREAKER_TRANSITIONS.labels(scope, to.value).inc()
        if to is BreakerState.OPEN:
            log.warning(
                "circuit breaker opened", breaker=scope, cooldown_seconds=self.settings.breaker_cooldown_seconds
            )
        else:
            log.info(f"circuit breaker {'half-open: probing' if to is BreakerState.HALF_OPEN else 'closed'}",
                     breaker=scope)  # fmt: skip
