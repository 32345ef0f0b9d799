"""Fixtures for the upstream simulator tests: one in-process simulator, real SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark

from tests.upstream_simulator.helpers import ARK_KEY, OPENAI_KEY, VOLC_AK, VOLC_SK
from upstream_simulator import SimulatorSettings, SimulatorThread
from upstream_simulator.control import SimulatorControl


@pytest.fixture(scope="session", autouse=True)
def _no_proxy() -> Iterator[None]:
    """Keep SDK traffic to 127.0.0.1 away from any proxy configured in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="session")
def sim(_no_proxy: None) -> Iterator[SimulatorThread]:
    """The simulator, on a free port, with 0.5 s video jobs and test credentials."""
    settings = SimulatorSettings(
        host="127.0.0.1",
        port=0,
        video_seconds=0.5,
        ark_api_key=ARK_KEY,
        openai_api_key=OPENAI_KEY,
        volc_access_key=VOLC_AK,
        volc_secret_key=VOLC_SK,
    )
    with SimulatorThread(settings) as running:
        yield running


@pytest.fixture(scope="session")
def control(sim: SimulatorThread) -> Iterator[SimulatorControl]:
    """Admin client of the shared simulator."""
    with SimulatorControl(sim.url) as client:
        yield client


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    """Every test starts without faults, stats or jobs (only for tests that use the shared simulator)."""
    if "sim" in request.fixturenames:
        ctl: SimulatorControl = request.getfixturevalue("control")
        ctl.clear_faults()
        ctl.reset()


@pytest.fixture
def ark(sim: SimulatorThread) -> Ark:
    """The real Ark SDK client, no retries."""
    return Ark(api_key=ARK_KEY, base_url=sim.url + "/api/v3", max_retries=0)


@pytest.fixture
def oai(sim: SimulatorThread) -> OpenAI:
    """The real OpenAI SDK client, no retries."""
    return OpenAI(api_key=OPENAI_KEY, base_url=sim.url + "/v1", max_retries=0)


@pytest.fixture
def visual(sim: SimulatorThread) -> VisualService:
    """The real VisualService singleton, re-pointed at the simulator (its __init__ resets host/credentials)."""
    service = VisualService()
    service.set_host(sim.url.removeprefix("http://"))
    service.set_scheme("http")
    service.set_ak(VOLC_AK)
    service.set_sk(VOLC_SK)
    return service
