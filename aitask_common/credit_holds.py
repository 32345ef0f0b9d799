"""Credit held for running tasks, in Redis: what a create checks and holds in one atomic step.

One hash per user, `aitask:credit:<user>`: `seq` and `balance` (the newest ledger entry this hash has seen:
aitask_common/ledger.py is the truth), `held` (the credits held), and `hold:<task id>` = "<cost>:<ms>" per task
holding credit. A create holds credit in the script that reserves its in-flight slot (task_service/limits.py),
only while `balance - held` covers the cost. The settlement pass drops a hold with RELEASE_SCRIPT after writing the
task's settle or refund to the ledger, and moves `seq`/`balance` forward (never back, so the order of two passes or
grants does not matter).

The hash is a cache: when Redis lost it (a restart without persistence), the next create or balance read rebuilds
it from the ledger and the tasks still holding credit (`billing_open`). A task released while the hash was missing
leaves a tombstone, so a rebuild that read the task as open before its release does not hold its credit again.
A create in flight while Redis lost the hash may store its task after a rebuild read the open tasks: its credit
is then not held until it ends (it is still settled in the ledger), so the user may overspend by that much once.
"""

from __future__ import annotations

from typing import Final

from aitask_common.queue_shards import layout, user_key

CREDIT_KEY_PREFIX: Final = "aitask:credit:"
# A released task's tombstone.
RELEASED_PREFIX: Final = "aitask:credit-released:"
RELEASED_TOMBSTONE_MS: Final = 10 * 60 * 1000
HOLD_PREFIX: Final = "hold:"


def credit_key(user_id: str) -> str:
    return user_key(CREDIT_KEY_PREFIX, user_id)


def user_of_credit_key(key: str) -> str:
    """The user whose hash `key` is (credit_key's inverse)."""
    user_id = key.removeprefix(CREDIT_KEY_PREFIX)
    return user_id[1:-1] if layout().cluster else user_id


def released_key(user_id: str, task_id: str) -> str:
    """A released task's tombstone: a script joins it with its user's hash, so on a cluster it takes the user's tag."""
    return f"{RELEASED_PREFIX}{{{user_id}}}{task_id}" if layout().cluster else RELEASED_PREFIX + task_id


# KEYS[1] the user's hash, KEYS[2] the task's tombstone; ARGV task id, the ledger's newest seq and balance after
# the release (0, 0 when nothing was written: a create that did not store its task), the tombstone's lifetime (ms).
# Drops the task's hold if the hash has it; returns 1 when it did.
RELEASE_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
  return 0
end
local seq = tonumber(ARGV[2])
if seq > tonumber(redis.call('HGET', KEYS[1], 'seq')) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'balance', ARGV[3])
end
local hold = redis.call('HGET', KEYS[1], 'hold:' .. ARGV[1])
if not hold then
  return 0
end
local cost = tonumber(string.match(hold, '^(%-?%d+)'))
redis.call('HINCRBY', KEYS[1], 'held', -cost)
redis.call('HDEL', KEYS[1], 'hold:' .. ARGV[1])
return 1
"""

# KEYS[1] the user's hash; ARGV the ledger's newest seq and balance (a grant). Moves the hash forward only.
ADVANCE_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'seq')) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'balance', ARGV[2])
end
return 1
"""

# KEYS[1] the user's hash, KEYS[2..] the tombstones of the holds in ARGV; ARGV seq, balance, then task id, cost,
# created (ms) per hold. Writes the hash only if it is still missing (another rebuild won otherwise).
REBUILD_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local held = 0
local fields = {'seq', ARGV[1], 'balance', ARGV[2]}
for i = 3, #ARGV, 3 do
  if redis.call('EXISTS', KEYS[2 + (i - 3) / 3]) == 0 then
    held = held + tonumber(ARGV[i + 1])
    table.insert(fields, 'hold:' .. ARGV[i])
    table.insert(fields, ARGV[i + 1] .. ':' .. ARGV[i + 2])
  end
end
table.insert(fields, 'held')
table.insert(fields, held)
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""


def parse_hold(value: bytes | str) -> tuple[int, int]:
    """A hold's cost and creation time (ms)."""
    text = value.decode() if isinstance(value, bytes) else value
    cost, _, created = text.partition(":")
    return int(cost), int(created or 0)
