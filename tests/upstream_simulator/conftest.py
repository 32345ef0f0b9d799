"""Fixtures for the upstream simulator tests: real SDK clients pointed at the shared simulator (tests/conftest.py)."""

from __future__ import annotations

import pytest
from openai import OpenAI
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark

from tests.upstream_simulator.helpers import ARK_KEY, OPENAI_KEY, VOLC_AK, VOLC_SK
from upstream_simulator import SimulatorThread


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
