"""wait_for_redis, what a dispatcher worker and its scheduler do while Redis is away, on a real Redis that stops and
comes back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aitask_common.redis_clients import wait_for_redis
from devstack.stack import LoneRedis


def no_retries(port: int) -> Redis:
    """A client whose ping fails at once while Redis is away (redis-py retries three times by default)."""
    return Redis(port=port, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def test_it_backs_off_until_redis_is_back(tmp_path: Path) -> None:
    with LoneRedis(tmp_path) as server:
        client = no_retries(server.port)
        server.__exit__()
        pings: list[float] = []
        restart = threading.Timer(1.0, server.__enter__)
        restart.start()
        try:
            waited = wait_for_redis(client, lambda: False, 0.05, 0.4, lambda: pings.append(time.monotonic()))
        finally:
            restart.join()
        assert waited is not None and waited >= 1.0
        assert client.ping()
        gaps = [later - earlier for earlier, later in zip(pings, pings[1:], strict=False)]
        # 0.05, 0.1, 0.2, then 0.4 at most: the gaps grow, and stop growing at the longest delay.
        assert gaps[0] < 0.2 and max(gaps) < 0.4 + 0.3, gaps
        assert gaps[1] > gaps[0], gaps


def test_a_stop_ends_the_wait(tmp_path: Path) -> None:
    with LoneRedis(tmp_path) as server:
        client = no_retries(server.port)
        server.__exit__()
        calls: list[None] = []
        waited = wait_for_redis(client, lambda: len(calls) >= 3, 0.01, 0.01, lambda: calls.append(None))
        assert waited is None and len(calls) == 3
        server.__enter__()
