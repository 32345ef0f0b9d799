"""The webhook delivery loop's claim script (issue 17) against a real Redis: due ids come out oldest due first, at
most as many as asked, each leased (scored at the lease's end) in the same step, so a second claim does not take
them until the lease passes."""

from __future__ import annotations

import uuid

from devstack.stack import LoneRedis
from dispatcher_service.webhook_delivery import CLAIM_SCRIPT

NOW = 1_800_000_000.0
LEASE = 30.0


def test_due_ids_are_claimed_oldest_first_once_each_until_their_lease_passes(redis_server: LoneRedis) -> None:
    redis = redis_server.redis()
    key = f"test:webhooks:due:{uuid.uuid4().hex}"
    redis.zadd(key, {"late": NOW - 1, "early": NOW - 5, "middle": NOW - 3, "future": NOW + 60})
    claim = redis.register_script(CLAIM_SCRIPT)
    try:
        assert claim(keys=[key], args=[NOW, 2, NOW + LEASE]) == [b"early", b"middle"]
        assert claim(keys=[key], args=[NOW, 10, NOW + LEASE]) == [b"late"]
        assert claim(keys=[key], args=[NOW + 1, 10, NOW + 1 + LEASE]) == []
        assert redis.zscore(key, "early") == NOW + LEASE and redis.zscore(key, "future") == NOW + 60
        # The lease has passed: the claimed ids (a dispatcher died sending them) are due again.
        again = claim(keys=[key], args=[NOW + LEASE, 10, NOW + 2 * LEASE])
        assert sorted(again) == [b"early", b"late", b"middle"]
        assert redis.zcard(key) == 4  # a claim moves ids, it never drops one
    finally:
        redis.delete(key)
