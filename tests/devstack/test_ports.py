"""Test stacks get distinct ports that no outgoing connection can take before their servers bind them."""

from __future__ import annotations

import socket

from devstack.processes import EPHEMERAL_RANGE, LOWEST_TEST_PORT, Ports


def test_a_stacks_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    for _ in range(50):
        ports = list(vars(Ports.free()).values())
        assert len(set(ports)) == len(ports)
        assert all(LOWEST_TEST_PORT <= port < first_ephemeral for port in ports), ports
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))  # still free: choosing a port does not hold it
