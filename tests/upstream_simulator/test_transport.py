"""Transport faults, switched through the control API (issue 29, item 6): a connection reset mid-response, a
truncated body, an HTML 502 page, a 408, and Ark's per-image data[].error."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest
from openai import OpenAI
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkAPIConnectionError, ArkInternalServerError

from tests.upstream_simulator.helpers import OPENAI_KEY
from upstream_simulator import SimulatorThread
from upstream_simulator.control import SimulatorControl

SEEDREAM = "doubao-seedream-3-0-t2i-250415"
HI = [{"role": "user", "content": "hi"}]


def _raw_exchange(sim: SimulatorThread, path: str, body: bytes) -> tuple[bytes, BaseException | None]:
    """Send one HTTP/1.1 request on a raw socket; return what arrived and how the connection ended."""
    host, port = sim.url.removeprefix("http://").split(":")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {OPENAI_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    received, ended = b"", None
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:
            ended = exc
    return received, ended


def test_reset_mid_response(sim: SimulatorThread, oai: OpenAI, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", transport="reset")
    body = b'{"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}'
    received, ended = _raw_exchange(sim, "/v1/chat/completions", body)
    head, _, partial = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    assert 0 < len(partial) < length  # half a body, then ...
    assert isinstance(ended, ConnectionResetError)  # ... a reset, not a clean close
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-5.5", messages=HI)
    assert control.stats()["openai.chat"]["requests"] == 2  # the upstream did the work both times


def test_truncated_body(sim: SimulatorThread, ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", transport="truncate")
    body = b'{"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}'
    received, ended = _raw_exchange(sim, "/v1/chat/completions", body)
    head, _, partial = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and ended is None  # closed cleanly, but short
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    assert 0 < len(partial) < length
    control.set_faults("ark.chat", transport="truncate")
    with pytest.raises(ArkAPIConnectionError):
        ark.chat.completions.create(model="doubao-1-5-pro-32k-250115", messages=HI)


def test_html_502_page(oai: OpenAI, ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("openai.images", transport="html_502")
    with pytest.raises(openai.InternalServerError) as info:
        oai.images.generate(model="gpt-image-2.5-flare", prompt="a cat")
    assert info.value.status_code == 502
    assert info.value.response.headers["content-type"].startswith("text/html")
    assert "<title>502 Bad Gateway</title>" in info.value.response.text
    control.set_faults("ark.images", transport="html_502")
    with pytest.raises(ArkInternalServerError) as ark_info:
        ark.images.generate(model=SEEDREAM, prompt="a cat")
    assert ark_info.value.status_code == 502 and ark_info.value.code is None
    assert control.stats()["ark.images"]["errors"] == 1


def test_408_on_the_visual_api(visual: VisualService, control: SimulatorControl) -> None:
    control.set_faults("visual.CVSync2AsyncSubmitTask", transport="timeout_408")
    with pytest.raises(Exception, match="408 Request Timeout"):
        visual.cv_sync2async_submit_task({"req_key": "jimeng_vgfm_t2v_l20", "prompt": "a dog"})
    # Nothing was submitted: a proxy answered before the vendor saw the request.
    assert control.stats()["visual.CVSync2AsyncSubmitTask"] == {"requests": 1, "ok": 0, "errors": 1, "rate_limited": 0}


def test_ark_per_image_error(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.images", transport="image_error")
    resp = ark.images.generate(model=SEEDREAM, prompt="a cat")
    item = resp.data[0]
    assert item.url is None and item.b64_json is None
    # The SDK keeps the undeclared field as a plain dict (what the provider's data[].error branch reads).
    assert item.error["code"] == "OutputImageSensitiveContentDetected" and item.error["message"]
    assert resp.usage.generated_images == 0
    control.clear_faults()
    assert ark.images.generate(model=SEEDREAM, prompt="a cat").data[0].url


def test_transport_rate_and_validation(sim: SimulatorThread, control: SimulatorControl) -> None:
    control.set_faults("openai.chat", transport="html_502", transport_rate=0.0)
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    body = {"model": "gpt-5.5", "messages": HI}
    assert httpx.post(sim.url + "/v1/chat/completions", json=body, headers=headers, trust_env=False).status_code == 200
    for bad in ({"endpoint": "openai.images", "transport": "image_error"}, {"endpoint": "ark.chat", "transport": "x"}):
        assert httpx.post(sim.url + "/_sim/faults", json=bad, trust_env=False).status_code == 400
