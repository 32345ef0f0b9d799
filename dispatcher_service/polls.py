"""Runs the due polls of upstream jobs on one thread in each worker process.

A poll used to be an RQ job of its own: about twenty Redis round trips of RQ
bookkeeping around one cheap status request, so with thousands of videos in
flight, finishing them cost the workers more than starting them and lateness
grew with the backlog. Now `schedule_poll` (schedule.py) puts the task in a
sorted set scored by when its poll is due. Each worker process's poller claims a
few due entries at a time, moving their score CLAIM_SECONDS ahead so no other
poller takes them meanwhile, and runs `jobs.run_poll` on each, which finishes
the task or schedules its next poll. An entry still holding the claim after that is one the run left
to someone else (the task moved on, or another run holds its lease) and goes.
A poller that dies mid-batch leaves its claimed entries to come due again:
nothing is lost, at worst polled twice, and the task lease turns the second run
into a no-op.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from redis import Redis

from aitask_common.logging import get_logger
from aitask_common.queues import poll_hints_key, polls_key
from dispatcher_service.schedule import PollHint, parse_hint

log = get_logger(__name__)

# Due entries one claim takes (small, so a slow upstream holds few polls back from other pollers).
BATCH = 8
# How long a claimed entry stays hidden from other pollers.
CLAIM_SECONDS = 30.0
# How long an idle poller waits before it looks again (randomised, so pollers do not tick together).
IDLE_SECONDS = 0.2

# Atomically take up to ARGV[3] entries due by ARGV[1], hide them until ARGV[2]; returns id, hint pairs.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, task_id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], task_id)
  claimed[#claimed + 1] = task_id
  claimed[#claimed + 1] = redis.call('HGET', KEYS[2], task_id) or ''
end
return claimed
"""
# Drop KEYS[1]'s entry ARGV[1] (and its hint) if it still holds the claim score ARGV[2].
_RELEASE = """
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 0
"""
# Make KEYS[1]'s entries ARGV[3..] due at ARGV[2] again if they still hold the claim score ARGV[1].
_UNCLAIM = """
for i = 3, #ARGV do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  end
end
return 0
"""

RunPoll = Callable[[str, PollHint | None], object]


class Poller:
    """Claims due polls and runs `run_poll(task_id, hint)` on each; `start()` does so on a daemon thread."""

    def __init__(self, redis: Redis, run_poll: RunPoll, shard: int = 0) -> None:
        self.redis = redis
        self.run_poll = run_poll
        # The queue shard whose poll set this poller drains (its worker's).
        self.polls, self.hints = polls_key(shard), poll_hints_key(shard)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._unclaim = redis.register_script(_UNCLAIM)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, limit: int = BATCH) -> tuple[float, list[tuple[str, PollHint | None]]]:
        """The claim score and up to `limit` due polls, each with its hint (None if the hint is gone or
        outdated: the run then reads the task)."""
        now = time.time()
        until = now + CLAIM_SECONDS
        flat = self._claim(keys=[self.polls, self.hints], args=[now, until, limit])
        polls = [(task_id.decode(), parse_hint(hint)) for task_id, hint in zip(flat[::2], flat[1::2], strict=True)]
        return until, polls

    def run_once(self) -> int:
        """Claim one batch and run it; how many polls were claimed."""
        claimed_at = time.monotonic()
        until, batch = self.claim()
        for done, (task_id, hint) in enumerate(batch):
            if self._stop.is_set() or time.monotonic() - claimed_at > CLAIM_SECONDS / 2:
                # Stopping, or the claim is running out: hand the rest back at once.
                rest = [task_id for task_id, _ in batch[done:]]
                self._unclaim(keys=[self.polls], args=[until, time.time(), *rest])
                break
            try:
                self.run_poll(task_id, hint)
            except Exception as error:  # noqa: BLE001 - the claimed entry comes due again
                log.warning("poll failed; it will be retried", task_id=task_id, error=str(error))
                continue
            self._release(keys=[self.polls, self.hints], args=[task_id, until])
        return len(batch)

    def start(self) -> None:
        """Poll until `stop()`."""
        self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop after the current poll (the rest of its batch is handed back)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CLAIM_SECONDS)

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                claimed = self.run_once()
                if failing:
                    log.info("poller claims polls again")
                failing = False
                if claimed:
                    continue
            except Exception as error:  # noqa: BLE001 - an unreachable Redis must not end the loop
                if not failing:  # once per outage, not five times a second
                    log.warning("poller could not claim polls", error=str(error))
                failing = True
            self._stop.wait(IDLE_SECONDS * random.uniform(0.5, 1.5))
