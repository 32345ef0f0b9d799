"""Fair share between users within a priority: a fair admission step in front of the RQ queues.

RQ serves each queue first in, first out, so a user who creates 10,000 tasks at once would make everyone else's
task wait behind all of them. Instead the task service lets at most `depth` first jobs of one user wait in a
priority's RQ queue at a time; the rest of that user's tasks wait in the user's backlog (a sorted set, oldest
first). Each time a worker picks up one of the user's first jobs, the user's next backlogged task is enqueued,
at the back of the queue. A newcomer's task is therefore behind at most `depth` jobs of each busy user, whatever
their backlogs: round-robin between users, with RQ still the queue underneath and priorities still served in
order (each priority has its own backlogs).

With queue shards (aitask_common/queue_shards.py) each shard's queues have fair share of their own, its keys under
the shard's tag beside its queues: a user may have `depth` first jobs waiting in each shard's queue, and a task
waits behind at most `depth` of each busy user's in the queue it is in, which is the one that serves it.

Keys (the task service admits, the dispatcher advances, the reconciler rescues), each under its task's shard:
- `aitask:fair:queued:<priority>:<user>`: the user's first jobs waiting in RQ (task id -> enqueue time); an
  entry older than QUEUED_STALE_SECONDS no longer counts (a job an operator cleared must not block the user).
- `aitask:fair:backlog:<priority>:<user>`: the user's tasks not yet enqueued (task id -> create time).
- `aitask:fair:task:<task id>`: "<priority> <user>" while the task's first job waits in RQ, so the worker that
  picks it up knows whose backlog to advance.
- `aitask:fair:backlogged`: hash of every backlogged task id -> "<priority> <user>": the reconciler leaves those
  alone (they wait their turn, they are not lost), and enqueues a user's next one itself when none of the
  user's jobs is left in RQ to advance the backlog.

Sharded, the prefix is `aitask:fair:{q<k>}:`. After QUEUE_SHARDS shrinks, the backlogs of the shards no longer
served are not found there: the reconciler enqueues those tasks as stuck ones, once, without waiting their turn.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import NamedTuple

from redis import Redis
from redis.client import Pipeline

from aitask_common.queue_shards import layout

FAIR_PREFIX = "aitask:fair:"
# Long enough for a first job to reach the head of a deep queue of many users; past it the entry stops counting.
QUEUED_STALE_SECONDS = 300.0
MARKER_SECONDS = 7 * 24 * 3600


def fair_prefix(shard: int) -> str:
    """The prefix of a shard's fair share keys (its scripts build keys from it): under the shard's tag, so they
    share its slot on a cluster."""
    return layout().key(FAIR_PREFIX.rstrip(":"), shard) + ":"


def backlogged_key(shard: int) -> str:
    return fair_prefix(shard) + "backlogged"


# KEYS queued, backlog, marker, backlogged; ARGV task id, now, depth, stale before, "<priority> <user>".
# Returns 1 if the task's job goes to RQ now (counted as queued), 0 if the task joined the user's backlog.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[2]) == 0 and redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[4])))
  redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6])
  return 1
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
return 0
"""

# The owner's next backlogged task takes the turn: popped, counted as queued, marked. ARGV[1] prefix, ARGV[2]
# "<priority> <user>", ARGV[3] now, ARGV[4] stale before, ARGV[5] marker lifetime; KEYS[1] backlogged hash.
# Returns the task id, or false when the backlog is empty.
_NEXT_TURN = """
local function next_turn(owner)
  local space = string.find(owner, ' ')
  local scope = string.sub(owner, 1, space - 1) .. ':' .. string.sub(owner, space + 1)
  local popped = redis.call('ZPOPMIN', ARGV[1] .. 'backlog:' .. scope)
  if not popped[1] then return false end
  redis.call('HDEL', KEYS[1], popped[1])
  local queued = ARGV[1] .. 'queued:' .. scope
  redis.call('ZADD', queued, ARGV[3], popped[1])
  redis.call('EXPIRE', queued, math.ceil(tonumber(ARGV[3]) - tonumber(ARGV[4])))
  redis.call('SET', ARGV[1] .. 'task:' .. popped[1], owner, 'EX', ARGV[5])
  return popped[1]
end
"""

# A worker picked up a first job: KEYS[1] backlogged hash, KEYS[2] its marker; ARGV[6] its task id. Returns
# {next task id, priority, user} or false.
_STARTED = (
    _NEXT_TURN
    + """
local owner = redis.call('GET', KEYS[2])
if not owner then return false end
redis.call('DEL', KEYS[2])
local space = string.find(owner, ' ')
local scope = string.sub(owner, 1, space - 1) .. ':' .. string.sub(owner, space + 1)
redis.call('ZREM', ARGV[1] .. 'queued:' .. scope, ARGV[6])
local next_task = next_turn(owner)
if not next_task then return false end
return {next_task, string.sub(owner, 1, space - 1), string.sub(owner, space + 1)}
"""
)

# The reconciler: ARGV[2] "<priority> <user>" has backlogged tasks; if none of the user's jobs is left in RQ
# (after dropping stale entries), the next one takes the turn. Returns its task id or false.
_RESCUE = (
    _NEXT_TURN
    + """
local space = string.find(ARGV[2], ' ')
local queued = ARGV[1] .. 'queued:' .. string.sub(ARGV[2], 1, space - 1) .. ':' .. string.sub(ARGV[2], space + 1)
redis.call('ZREMRANGEBYSCORE', queued, '-inf', ARGV[4])
if redis.call('ZCARD', queued) > 0 then return false end
return next_turn(ARGV[2])
"""
)


def owner(priority: str, user_id: str) -> str:
    """The "<priority> <user>" a task's turn belongs to (a priority has no space)."""
    return f"{priority} {user_id}"


def admit(pipe: Pipeline, task_id: str, priority: str, user_id: str, depth: int, now: float) -> None:
    """Add to `pipe` the admission of a new task: its reply is 1 when its first job may go to RQ now, 0 when it
    joined its user's backlog."""
    prefix = fair_prefix(layout().shard_of(task_id))
    scope = f"{priority}:{user_id}"
    keys = [f"{prefix}queued:{scope}", f"{prefix}backlog:{scope}", f"{prefix}task:{task_id}", f"{prefix}backlogged"]
    stale_before = now - QUEUED_STALE_SECONDS
    args: list[str | float] = [task_id, now, depth, stale_before, owner(priority, user_id), MARKER_SECONDS]
    pipe.eval(_ADMIT, len(keys), *keys, *args)


def started(redis: Redis, task_id: str) -> tuple[str, str, str] | None:
    """A worker picked up the task's job: if it was a first job counted against its user, the user's next
    backlogged task takes its turn; that task's (id, priority, user), to be enqueued by the caller."""
    now = time.time()
    prefix = fair_prefix(layout().shard_of(task_id))
    args: list[str | float] = [prefix, "", now, now - QUEUED_STALE_SECONDS, MARKER_SECONDS, task_id]
    reply = redis.eval(_STARTED, 2, f"{prefix}backlogged", f"{prefix}task:{task_id}", *args)
    if not reply:
        return None
    next_task, priority, user_id = (value.decode() if isinstance(value, bytes) else value for value in reply)
    return next_task, priority, user_id


class BacklogOwner(NamedTuple):
    """Whose backlog a task waits in: its queue shard, and "<priority> <user>"."""

    shard: int
    owner: str


def backlogged_owners(redis: Redis, task_ids: list[str]) -> dict[str, BacklogOwner]:
    """Which of `task_ids` wait in a backlog, with whose."""
    by_shard: dict[int, list[str]] = defaultdict(list)
    for task_id in task_ids:
        by_shard[layout().shard_of(task_id)].append(task_id)
    found = {}
    for shard, ids in by_shard.items():
        for task_id, value in zip(ids, redis.hmget(backlogged_key(shard), ids), strict=True):
            if value is not None:
                found[task_id] = BacklogOwner(shard, value.decode() if isinstance(value, bytes) else value)
    return found


def rescue(redis: Redis, backlog: BacklogOwner) -> str | None:
    """If none of the owner's jobs is left in its shard's queue to advance its backlog, take its next task out (the
    caller enqueues it); its id, or None."""
    now = time.time()
    prefix = fair_prefix(backlog.shard)
    args: list[str | float] = [prefix, backlog.owner, now, now - QUEUED_STALE_SECONDS, MARKER_SECONDS]
    reply = redis.eval(_RESCUE, 1, backlogged_key(backlog.shard), *args)
    if not reply:
        return None
    return reply.decode() if isinstance(reply, bytes) else str(reply)
