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


def test_a_video_refused_by_moderation_is_a_failed_job_not_a_retry(sim: SimulatorThread) -> None:
    # The simulator answers the poll of a refused job with 50511 (Post Img Risk Not Pass), as the vendor does:
    # retryable for a new submit, but polling the same job again gets the same answer for an hour.
    client = VisualClient(sim.url, VOLC_AK, VOLC_SK, timeout=10, concurrency=2)
    request = pb.GenerationInput(model="jimeng_vgfm_t2v_l20", prompt="waves [[fail:video]]", aspect_ratio="16:9")

    async def run() -> pb.PollJobResponse:
        job_id = await client.submit_video(request)
        while (answer := await client.poll_video(request.model, job_id)).state == pb.JOB_STATE_RUNNING:
            await asyncio.sleep(0.1)
        return answer

    answer = asyncio.run(run())
    assert answer.state == pb.JOB_STATE_FAILED
    assert answer.error_message.startswith("jimeng 50511: "), answer.error_message
