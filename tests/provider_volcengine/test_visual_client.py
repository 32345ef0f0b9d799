"""The provider's Jimeng client against the shared simulator (tests/conftest.py), through the real `volcengine` SDK."""

from __future__ import annotations

import asyncio

from requests.adapters import HTTPAdapter

from aitask.provider.v1 import provider_service_pb2 as pb
from provider_volcengine.visual import VisualClient
from tests.upstream_simulator.helpers import VOLC_AK, VOLC_SK
from upstream_simulator import SimulatorThread
from upstream_simulator.control import SimulatorControl

CONCURRENCY = 24  # well above requests' default of 10 connections per host
LATENCY_S = 0.3  # long enough for every call of a round to be in flight at once


def test_concurrent_calls_reuse_their_connections(sim: SimulatorThread, control: SimulatorControl) -> None:
    client = VisualClient(sim.url, VOLC_AK, VOLC_SK, timeout=10, concurrency=CONCURRENCY)
    request = pb.GenerationInput(model="jimeng_high_aes_general_v21_L", prompt="a kite", size="512x512")

    async def round_of_calls() -> list[pb.GenerateResponse]:
        return await asyncio.gather(*(client.generate_image(request) for _ in range(CONCURRENCY)))

    adapter = client.service.session.get_adapter(sim.url)
    assert isinstance(adapter, HTTPAdapter)
    control.set_faults("visual.CVProcess", latency_s=LATENCY_S)
    first = asyncio.run(round_of_calls())
    (key,) = adapter.poolmanager.pools.keys()  # one host: one pool
    pool = adapter.poolmanager.pools[key]
    opened = pool.num_connections
    second = asyncio.run(round_of_calls())
    assert all(response.image_url for response in first + second)
    assert 1 < opened <= CONCURRENCY  # the calls did overlap
    # Every connection of the first round was kept and reused: the second round opened none.
    assert pool.num_connections == opened
