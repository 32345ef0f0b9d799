"""Counted limits: per-key request rate and concurrency, an exhausted quota, each answered as the vendor
answers it, with no Retry-After where upstream_apis.md does not confirm one (issue 29, item 3)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkPermissionDeniedError, ArkRateLimitError

from tests.upstream_simulator.helpers import OPENAI_KEY, visual_error
from upstream_simulator import SimulatorThread
from upstream_simulator.context import Limiter
from upstream_simulator.control import SimulatorControl

HI = [{"role": "user", "content": "hi"}]
IMAGE = {"req_key": "jimeng_high_aes_general_v21_L", "prompt": "a cat", "width": 256, "height": 256, "use_sr": False}


def test_openai_rate_limit_is_counted_in_a_sliding_window(sim: SimulatorThread, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", rate_limit=3, rate_window_s=1.0)
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    body = {"model": "gpt-5.5", "messages": HI}
    with httpx.Client(base_url=sim.url, headers=headers, trust_env=False) as client:
        started = time.monotonic()
        statuses = [client.post("/v1/chat/completions", json=body) for _ in range(5)]
        assert time.monotonic() - started < 0.9, "the burst must fit in the window for this test to mean anything"
        assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]  # counted, not rolled
        refused = statuses[3]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.json()["error"]["type"] == "requests"
        assert "retry-after" not in refused.headers and "retry-after-ms" not in refused.headers
        time.sleep(1.05)  # the window slides: the three admitted requests have left it
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert control.stats()["openai.chat"] == {"requests": 6, "ok": 4, "errors": 0, "rate_limited": 2}


def test_openai_sdk_sees_rate_limit_error(oai: OpenAI, control: SimulatorControl) -> None:
    control.set_faults("openai.images", rate_limit=1, rate_window_s=60)
    oai.images.generate(model="gpt-image-2.5-flare", prompt="a cat")
    with pytest.raises(openai.RateLimitError) as info:
        oai.images.generate(model="gpt-image-2.5-flare", prompt="a cat")
    assert info.value.code == "rate_limit_exceeded"
    # Other endpoints have their own budget.
    oai.chat.completions.create(model="gpt-5.5", messages=HI)


def test_openai_insufficient_quota(oai: OpenAI, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", quota_exhausted=True)
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-5.5", messages=HI)
    assert (info.value.status_code, info.value.code, info.value.type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert "retry-after" not in info.value.response.headers


def test_ark_counted_limits_and_overdue_account(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.chat", rate_limit=2, rate_window_s=60)
    for _ in range(2):
        ark.chat.completions.create(model="doubao-1-5-pro-32k-250115", messages=HI)
    with pytest.raises(ArkRateLimitError) as info:
        ark.chat.completions.create(model="doubao-1-5-pro-32k-250115", messages=HI)
    assert info.value.code == "RateLimitExceeded.EndpointRPMExceeded"
    assert "Retry-After" not in info.value.response.headers
    control.set_faults("ark.images", quota_exhausted=True)
    with pytest.raises(ArkPermissionDeniedError) as denied:
        ark.images.generate(model="doubao-seedream-3-0-t2i-250415", prompt="a cat")
    assert denied.value.code == "AccountOverdueError"


def test_visual_qps_limit_is_50429(visual: VisualService, control: SimulatorControl) -> None:
    control.set_faults("visual.CVProcess", rate_limit=2, rate_window_s=60)
    for _ in range(2):
        assert visual.cv_process(IMAGE)["code"] == 10000
    with pytest.raises(Exception) as info:
        visual.cv_process(IMAGE)
    body = visual_error(info.value)
    assert (body["code"], body["status"], body["message"]) == (
        50429, 50429, "Request Has Reached API Limit, Please Try Later"
    )  # fmt: skip


def test_visual_concurrency_limit_is_50430(visual: VisualService, control: SimulatorControl) -> None:
    """Four calls at once against a limit of two, each held 0.6 s: exactly two pass, two get 50430."""
    control.set_faults("visual.CVProcess", concurrency_limit=2, latency_s=0.6)

    def call(_: int) -> int:
        try:
            return visual.cv_process(IMAGE)["code"]
        except Exception as exc:  # noqa: BLE001 - the visual SDK raises bare Exception
            return visual_error(exc)["code"]

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(call, range(4)))
    assert codes == [10000, 10000, 50430, 50430]
    # Once they are answered, their slots are free again.
    assert visual.cv_process(IMAGE)["code"] == 10000
    assert control.stats()["visual.CVProcess"]["rate_limited"] == 2


def test_quota_cannot_be_set_on_the_visual_api(sim: SimulatorThread) -> None:
    response = httpx.post(
        sim.url + "/_sim/faults", json={"endpoint": "visual.CVProcess", "quota_exhausted": True}, trust_env=False
    )
    assert response.status_code == 400


def test_limits_are_kept_per_key_and_endpoint() -> None:
    limiter = Limiter()
    assert limiter.admit(("openai.chat", "key-a"), 1, 60, 0) is None
    assert limiter.admit(("openai.chat", "key-a"), 1, 60, 0) == "rate"
    assert limiter.admit(("openai.chat", "key-b"), 1, 60, 0) is None  # another key has its own budget
    assert limiter.admit(("openai.images", "key-a"), 1, 60, 0) is None  # and so has another endpoint
    slot = ("visual.CVProcess", "ak")
    assert [limiter.admit(slot, 0, 1, 2) for _ in range(3)] == [None, None, "concurrency"]
    limiter.release(slot)
    assert limiter.inflight(slot) == 1 and limiter.admit(slot, 0, 1, 2) is None


def test_wrong_keys_do_not_spend_the_budget(sim: SimulatorThread, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", rate_limit=1, rate_window_s=60)
    body = {"model": "gpt-5.5", "messages": HI}
    with httpx.Client(base_url=sim.url, trust_env=False) as client:
        wrong = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-wrong-123456789"})
        assert wrong.status_code == 401
        good = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {OPENAI_KEY}"})
        assert good.status_code == 200
