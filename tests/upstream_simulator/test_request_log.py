"""The request log: what the simulator received, found by a test's own marker (upstream_simulator.request_log)."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkRateLimitError

from upstream_simulator import SimulatorThread
from upstream_simulator.control import SimulatorControl

SEEDREAM = "doubao-seedream-3-0-t2i-250415"


def test_requests_are_logged_as_sent_and_found_by_marker(
    ark: Ark, oai: OpenAI, visual: VisualService, control: SimulatorControl
) -> None:
    ark.images.generate(model=SEEDREAM, prompt="a fox marker-7f3a", size="512x512", seed=42)
    oai.chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "hi marker-7f3a"}], temperature=0.3
    )
    visual.cv_process({"req_key": "jimeng_high_aes_general_v21_L", "prompt": "a fox marker-9c1e", "seed": 7})

    ark_call, chat_call = control.requests("marker-7f3a")
    assert ark_call["endpoint"] == "ark.images" and ark_call["path"] == "/api/v3/images/generations"
    assert (ark_call["json"]["size"], ark_call["json"]["seed"]) == ("512x512", 42)
    assert chat_call["endpoint"] == "openai.chat" and chat_call["json"]["temperature"] == 0.3
    (visual_call,) = control.requests("marker-9c1e")
    assert visual_call["query"]["Action"] == "CVProcess" and visual_call["json"]["seed"] == 7
    assert control.requests("marker-never-sent") == []
    assert ark_call["status"] == chat_call["status"] == visual_call["status"] == 200


def test_each_request_records_the_status_it_was_answered_with(ark: Ark, control: SimulatorControl) -> None:
    with pytest.raises(ArkRateLimitError):
        ark.images.generate(model=SEEDREAM, prompt="a fox marker-5d8c [[fail:429]]")
    ark.images.generate(model=SEEDREAM, prompt="a fox marker-5d8c")
    assert [call["status"] for call in control.requests("marker-5d8c")] == [429, 200]


def test_a_search_needs_a_marker(sim: SimulatorThread) -> None:
    response = httpx.get(sim.url + "/_sim/requests", trust_env=False)
    assert response.status_code == 400 and "contains" in response.json()["error"]


def test_reset_forgets_the_log(ark: Ark, control: SimulatorControl) -> None:
    ark.images.generate(model=SEEDREAM, prompt="a fox marker-0b5d")
    assert len(control.requests("marker-0b5d")) == 1
    control.reset()
    assert control.requests("marker-0b5d") == []


@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
def test_a_multipart_request_is_logged_without_its_body(oai: OpenAI, control: SimulatorControl) -> None:
    video = oai.videos.create(model="sora-2", prompt="a fox marker-4e2a")
    assert control.requests("marker-4e2a") == []  # its fields are not read before the handler parses them
    assert video.prompt == "a fox marker-4e2a"
