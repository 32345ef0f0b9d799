"""Fault injection, the /_sim admin API and statistics."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai import OpenAI
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkInternalServerError, ArkRateLimitError

from tests.upstream_simulator.helpers import OPENAI_KEY, visual_error
from upstream_simulator import ENDPOINTS, SimulatorThread
from upstream_simulator.control import SimulatorControl

SEEDREAM = "doubao-seedream-3-0-t2i-250415"
SEEDANCE = "doubao-seedance-1-0-pro-250528"


def test_runtime_rate_limit_with_retry_after_on_ark(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.images", rate_limit_rate=1.0, retry_after_s=2.5)
    with pytest.raises(ArkRateLimitError) as info:
        ark.images.generate(model=SEEDREAM, prompt="a cat")
    assert info.value.code == "RateLimitExceeded.EndpointRPMExceeded"
    assert info.value.type == "TooManyRequests"
    assert info.value.response.headers["Retry-After"] == "3"  # whole seconds, rounded up
    # Other endpoints are unaffected.
    ark.chat.completions.create(model="doubao-1-5-pro-32k-250115", messages=[{"role": "user", "content": "hi"}])
    stats = control.stats()
    assert stats["ark.images"] == {"requests": 1, "ok": 0, "errors": 0, "rate_limited": 1}
    assert stats["ark.chat"]["ok"] == 1


def test_openai_sdk_honours_retry_after_ms(sim: SimulatorThread, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", rate_limit_rate=1.0, retry_after_s=0.4)
    client = OpenAI(api_key=OPENAI_KEY, base_url=sim.url + "/v1", max_retries=1)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "hi"}])
    elapsed = time.monotonic() - started
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after-ms"] == "400"
    assert elapsed >= 0.4  # the SDK waited the advertised 400 ms before its single retry
    assert control.stats()["openai.chat"]["rate_limited"] == 2


def test_rate_limit_on_visual_is_50429_with_retry_after(visual: VisualService, control: SimulatorControl) -> None:
    control.set_faults("visual.CVProcess", rate_limit_rate=1.0, retry_after_s=1)
    with pytest.raises(Exception) as info:
        visual.cv_process({"req_key": "jimeng_high_aes_general_v21_L", "prompt": "a cat"})
    assert visual_error(info.value)["code"] == 50429
    assert control.stats()["visual.CVProcess"]["rate_limited"] == 1


def test_injected_latency(oai: OpenAI, ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", latency_s=0.4)
    started = time.monotonic()
    oai.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    ark.chat.completions.create(model="doubao-1-5-pro-32k-250115", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 0.3


def test_error_rate_with_chosen_status(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.images", error_rate=1.0, error_status=503)
    with pytest.raises(ArkInternalServerError) as info:
        ark.images.generate(model=SEEDREAM, prompt="a cat")
    assert info.value.status_code == 503
    assert control.stats()["ark.images"]["errors"] == 1


def test_partial_error_rate_is_roughly_honoured(sim: SimulatorThread, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", error_rate=0.5)
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=sim.url, headers=headers, trust_env=False) as client:
        statuses = [client.post("/v1/chat/completions", json=body).status_code for _ in range(200)]
    assert set(statuses) == {200, 500}
    assert 50 < statuses.count(500) < 150  # binomial(200, 0.5): far outside 7 standard deviations otherwise
    stats = control.stats()["openai.chat"]
    assert stats["requests"] == 200 and stats["errors"] == statuses.count(500)


def test_wildcard_and_partial_updates(control: SimulatorControl) -> None:
    config = control.set_faults("*", latency_s=0.01, error_status=503)
    assert all(config[name]["latency_s"] == 0.01 for name in ENDPOINTS)
    config = control.set_faults("ark.images", error_rate=0.25)
    assert config["ark.images"] == {
        "latency_s": 0.01,  # untouched keys keep their values
        "error_rate": 0.25,
        "error_status": 503,
        "rate_limit_rate": 0.0,
        "retry_after_s": None,
        "video_seconds": None,
        "rate_limit": 0,
        "rate_window_s": 1.0,
        "concurrency_limit": 0,
        "quota_exhausted": False,
        "transport": None,
        "transport_rate": 1.0,
        "url_lifetime_s": None,
    }
    control.clear_faults()
    assert control.faults()["ark.images"]["latency_s"] == 0.0


@pytest.mark.parametrize(
    "body",
    [
        {"endpoint": "ark.nope", "latency_s": 1},
        {"endpoint": "ark.images", "error_rate": 2},
        {"endpoint": "ark.images", "error_status": 200},
        {"endpoint": "ark.images", "bogus": 1},
    ],
)
def test_admin_rejects_bad_fault_updates(sim: SimulatorThread, body: dict[str, object]) -> None:
    response = httpx.post(sim.url + "/_sim/faults", json=body, trust_env=False)
    assert response.status_code == 400


def test_per_endpoint_video_seconds(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.tasks.get", video_seconds=0)
    created = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "x"}])
    assert ark.content_generation.tasks.get(task_id=created.id).status == "succeeded"


def test_stats_count_paid_submits_and_reset_clears_jobs(ark: Ark, control: SimulatorControl) -> None:
    ids = [
        ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": f"clip {i}"}]).id
        for i in range(3)
    ]
    with pytest.raises(ArkRateLimitError):
        ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "[[fail:429]]"}])
    stats = control.stats()["ark.tasks.create"]
    assert stats == {"requests": 4, "ok": 3, "errors": 0, "rate_limited": 1}
    control.reset()
    assert control.stats()["ark.tasks.create"]["requests"] == 0
    with pytest.raises(Exception, match="404"):
        ark.content_generation.tasks.get(task_id=ids[0])


def test_health(sim: SimulatorThread) -> None:
    body = httpx.get(sim.url + "/_sim/health", trust_env=False).json()
    assert body["ok"] is True and "openai.videos.content" in body["endpoints"]
