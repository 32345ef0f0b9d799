"""The provider's Jimeng client against the simulator, through the real `volcengine` SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from requests.adapters import HTTPAdapter

from aitask.provider.v1 import provider_service_pb2 as pb
from provider_volcengine.visual import VisualClient
from tests.upstream_simulator.helpers import VOLC_AK, VOLC_SK
from upstream_simulator import SimulatorSettings, SimulatorThread
from upstream_simulator.control import SimulatorControl

CONCURRENCY = 24  # well above requests' default of 10 connections per host
LATENCY_S = 0.3  # long enough for every call of a round to be in flight at once


@pytest.fixture(scope="module")
def sim(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[SimulatorThread]:
    monkeypatch_module.setenv("NO_PROXY", "127.0.0.1,localhost")
    settings = SimulatorSettings(host="127.0.0.1", port=0, volc_access_key=VOLC_AK, volc_secret_key=VOLC_SK)
    with SimulatorThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_concurrent_calls_reuse_their_connections(sim: SimulatorThread) -> None:
    client = VisualClient(sim.url, VOLC_AK, VOLC_SK, timeout=10, concurrency=CONCURRENCY)
    request = pb.GenerationInput(model="jimeng_high_aes_general_v21_L", prompt="a kite", size="512x512")

    async def round_of_calls() -> list[pb.GenerateResponse]:
        return await asyncio.gather(*(client.generate_image(request) for _ in range(CONCURRENCY)))

    adapter = client.service.session.get_adapter(sim.url)
    assert isinstance(adapter, HTTPAdapter)
    with SimulatorControl(sim.url) as control:
        control.set_faults("visual.CVProcess", latency_s=LATENCY_S)
        try:
            first = asyncio.run(round_of_calls())
            (key,) = adapter.poolmanager.pools.keys()  # one host: one pool
            pool = adapter.poolmanager.pools[key]
            opened = pool.num_connections
            second = asyncio.run(round_of_calls())
        finally:
            control.clear_faults()
    assert all(response.image_url for response in first + second)
    assert 1 < opened <= CONCURRENCY  # the calls did overlap
    # Every connection of the first round was kept and reused: the second round opened none.
    assert pool.num_connections == opened
