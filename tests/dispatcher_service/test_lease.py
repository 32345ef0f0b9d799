"""The task lease (against a real Redis)."""

from __future__ import annotations

import time
import uuid

from devstack.stack import LoneRedis
from dispatcher_service.lease import LEASE_KEY_PREFIX, TaskLease


def test_a_held_lease_excludes_others_and_is_released(redis_server: LoneRedis) -> None:
    redis, task_id = redis_server.redis(), f"lease-{uuid.uuid4()}"
    with TaskLease(redis, task_id, 30) as first:
        with TaskLease(redis, task_id, 30) as second:
            assert first.acquired and not second.acquired
        assert redis.exists(LEASE_KEY_PREFIX + task_id)  # the loser's exit leaves the holder's lease alone
    assert not redis.exists(LEASE_KEY_PREFIX + task_id)


def test_a_lease_is_renewed_while_held_and_leases_of_different_ttls_coexist(redis_server: LoneRedis) -> None:
    redis = redis_server.redis()
    long_id, short_id = f"lease-{uuid.uuid4()}", f"lease-{uuid.uuid4()}"
    with TaskLease(redis, long_id, 60), TaskLease(redis, short_id, 1.5) as short:
        time.sleep(4.0)  # well past the short lease's 1.5 s TTL: only renewals keep it
        assert short.acquired and redis.get(LEASE_KEY_PREFIX + short_id) == short.token.encode()
        assert redis.pttl(LEASE_KEY_PREFIX + long_id) > 50_000
    assert not redis.exists(LEASE_KEY_PREFIX + short_id)


def test_a_lease_taken_over_after_expiry_is_not_released_by_its_old_holder(redis_server: LoneRedis) -> None:
    redis, task_id = redis_server.redis(), f"lease-{uuid.uuid4()}"
    with TaskLease(redis, task_id, 30) as old:
        redis.set(LEASE_KEY_PREFIX + task_id, "new-holder")  # as if it expired and another worker took it
        assert old.acquired
    assert redis.get(LEASE_KEY_PREFIX + task_id) == b"new-holder"


def test_a_lease_released_in_a_pipeline_goes_with_the_pipeline(redis_server: LoneRedis) -> None:
    redis, task_id = redis_server.redis(), f"lease-{uuid.uuid4()}"
    key = LEASE_KEY_PREFIX + task_id
    with TaskLease(redis, task_id, 30) as lease:
        with redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{key}:outcome", "written")
            lease.release_in(pipe)
            assert redis.exists(key)  # queued, not sent
            pipe.execute()
        assert not redis.exists(key) and redis.get(f"{key}:outcome") == b"written"
        assert not lease.acquired  # so leaving the block sends nothing more
        with TaskLease(redis, task_id, 30) as successor:
            assert successor.acquired  # free while the first block is still open
    redis.delete(f"{key}:outcome")
