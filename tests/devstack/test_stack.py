"""The fast tier's lone Redis (devstack.stack.LoneRedis): one redis-server, started and stopped with nothing else."""

from __future__ import annotations

import socket
from pathlib import Path

from devstack.stack import LoneRedis


def test_the_session_redis_answers_on_its_own_port(redis_server: LoneRedis) -> None:
    client = redis_server.redis(db=15)
    assert client.ping()
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_a_lone_redis_frees_its_port_when_it_stops(tmp_path: Path) -> None:
    with LoneRedis(tmp_path) as server:
        assert server.redis().ping()
        port = server.port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
