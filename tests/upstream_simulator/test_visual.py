"""Visual (Jimeng) endpoints through the real ``volcengine.visual.VisualService`` SDK."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest
from volcengine.visual.VisualService import VisualService

from tests.upstream_simulator.helpers import VOLC_AK, VOLC_SK, decode_png, fetch, is_mp4, visual_error, wait_for
from upstream_simulator import SimulatorThread
from upstream_simulator.control import SimulatorControl
from upstream_simulator.visual import verify_signature

IMAGE_KEY = "jimeng_high_aes_general_v21_L"
VIDEO_KEY = "jimeng_vgfm_t2v_l20"


def image_form(prompt: str = "一只猫", **extra: object) -> dict[str, object]:
    form: dict[str, object] = {"req_key": IMAGE_KEY, "prompt": prompt, "seed": -1, "width": 512, "height": 512}
    form.update(extra)
    return form


def test_cv_process_returns_png_base64_and_urls(visual: VisualService) -> None:
    resp = visual.cv_process(
        image_form(use_pre_llm=True, use_sr=True, return_url=True, logo_info={"add_logo": False, "position": 0})
    )
    assert resp["code"] == 10000 and resp["status"] == 10000 and resp["message"] == "Success"
    assert resp["time_elapsed"].endswith("ms") and resp["request_id"]
    data = resp["data"]
    # use_sr doubles the output size.
    assert decode_png(base64.b64decode(data["binary_data_base64"][0])) == (1024, 1024)
    assert decode_png(fetch(data["image_urls"][0]).content) == (1024, 1024)
    assert data["algorithm_base_resp"]["status_code"] == 0
    assert "一只猫" in data["rephraser_result"]


def test_cv_process_without_return_url_or_sr(visual: VisualService) -> None:
    data = visual.cv_process(image_form(width=384, height=512, use_sr=False, return_url=False))["data"]
    assert data["image_urls"] is None
    assert decode_png(base64.b64decode(data["binary_data_base64"][0])) == (384, 512)


def test_cv_process_validates_width(visual: VisualService) -> None:
    with pytest.raises(Exception) as info:
        visual.cv_process(image_form(width=2000))
    body = visual_error(info.value)
    assert body["code"] == 50200 and body["data"] is None
    assert "width" in body["message"]


def test_wrong_secret_key_is_signature_mismatch(visual: VisualService) -> None:
    visual.set_sk("not-the-secret")
    with pytest.raises(Exception, match="SignatureDoesNotMatch") as info:
        visual.cv_process(image_form())
    error = visual_error(info.value)["ResponseMetadata"]["Error"]
    assert (error["CodeN"], error["Code"]) == (100010, "SignatureDoesNotMatch")


def test_wrong_access_key_is_invalid_access_key(visual: VisualService) -> None:
    visual.set_ak("someone-else")
    with pytest.raises(Exception, match="InvalidAccessKey"):
        visual.cv_sync2async_submit_task({"req_key": VIDEO_KEY, "prompt": "a dog"})


def test_tampered_body_breaks_signature(sim: SimulatorThread, visual: VisualService) -> None:
    """Sign one body, send another: the simulator must notice through the body hash."""
    from volcengine.auth.SignerV4 import SignerV4

    api = visual.api_info["CVProcess"]
    request = visual.prepare_request(api, {})
    request.headers["Content-Type"] = "application/json"
    request.body = json.dumps(image_form("a cat"))
    SignerV4.sign(request, visual.service_info.credentials)
    good = httpx.post(request.build(), headers=request.headers, content=request.body, trust_env=False)
    assert good.status_code == 200
    bad = httpx.post(request.build(), headers=request.headers, content=json.dumps(image_form("a dog")), trust_env=False)
    assert bad.status_code == 401
    assert bad.json()["ResponseMetadata"]["Error"]["Code"] == "SignatureDoesNotMatch"


def test_stale_x_date_is_invalid_timestamp() -> None:
    body = b"{}"
    headers = {
        "authorization": "HMAC-SHA256 Credential=ak/20200101/cn-north-1/cv/request, SignedHeaders=x-date, Signature=0",
        "x-date": "20200101T000000Z",
        "x-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    assert verify_signature("POST", "/", "Action=CVProcess", headers, body, "ak", "sk") == "InvalidTimestamp"


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 50413), (429, 50429), (500, 50500)],
)
def test_prompt_fail_triggers_business_errors(visual: VisualService, status: int, code: int) -> None:
    with pytest.raises(Exception) as info:
        visual.cv_process(image_form(f"a cat [[fail:{status}]]"))
    body = visual_error(info.value)
    assert body["code"] == code and body["status"] == code
    assert body["data"] is None


def test_prompt_fail_401_is_gateway_error(visual: VisualService) -> None:
    with pytest.raises(Exception) as info:
        visual.cv_sync2async_submit_task({"req_key": VIDEO_KEY, "prompt": "[[fail:401]]"})
    assert visual_error(info.value)["ResponseMetadata"]["Error"]["Code"] == "InvalidAccessKey"


def test_video_task_in_queue_generating_done(visual: VisualService, control: SimulatorControl) -> None:
    sub = visual.cv_sync2async_submit_task(
        {"req_key": VIDEO_KEY, "prompt": "a dog", "seed": -1, "aspect_ratio": "16:9"}
    )
    assert sub["code"] == 10000
    task_id = sub["data"]["task_id"]
    assert task_id.isdigit() and len(task_id) == 19
    seen: list[str] = []

    def done() -> dict[str, object] | None:
        res = visual.cv_sync2async_get_result(
            {"req_key": VIDEO_KEY, "task_id": task_id, "req_json": json.dumps({"return_url": True})}
        )
        assert res["code"] == 10000
        if not seen or seen[-1] != res["data"]["status"]:
            seen.append(res["data"]["status"])
        return res if res["data"]["status"] == "done" else None

    res = wait_for(done)
    assert seen[-2:] == ["generating", "done"] and seen[0] in ("in_queue", "generating")
    assert is_mp4(fetch(res["data"]["video_url"]).content)
    assert json.loads(res["data"]["resp_data"])["urls"] == [res["data"]["video_url"]]
    stats = control.stats()
    assert stats["visual.CVSync2AsyncSubmitTask"]["requests"] == 1
    assert stats["visual.CVSync2AsyncGetResult"]["ok"] >= len(seen)


def test_video_task_is_in_queue_right_after_submit(visual: VisualService, control: SimulatorControl) -> None:
    control.set_faults("visual.CVSync2AsyncSubmitTask", video_seconds=5)
    task_id = visual.cv_sync2async_submit_task({"req_key": VIDEO_KEY, "prompt": "a dog"})["data"]["task_id"]
    res = visual.cv_sync2async_get_result({"req_key": VIDEO_KEY, "task_id": task_id})
    assert res["data"]["status"] == "in_queue" and res["data"]["video_url"] == ""


def test_unknown_task_is_not_found(visual: VisualService) -> None:
    res = visual.cv_sync2async_get_result({"req_key": VIDEO_KEY, "task_id": "7000000000000000001"})
    assert res["code"] == 10000
    assert res["data"]["status"] == "not_found"


def test_video_fail_trigger_reports_error_code(visual: VisualService, control: SimulatorControl) -> None:
    control.set_faults("visual.CVSync2AsyncSubmitTask", video_seconds=0)
    task_id = visual.cv_sync2async_submit_task({"req_key": VIDEO_KEY, "prompt": "x [[fail:video]]"})["data"]["task_id"]
    time.sleep(0.01)
    with pytest.raises(Exception) as info:
        visual.cv_sync2async_get_result({"req_key": VIDEO_KEY, "task_id": task_id})
    body = visual_error(info.value)
    assert body["code"] == 50511 and body["data"] is None


def test_unknown_action_is_gateway_404(sim: SimulatorThread) -> None:
    response = httpx.post(sim.url + "/?Action=Nope&Version=2022-08-31", content=b"{}", trust_env=False)
    assert response.status_code == 404
    assert response.json()["ResponseMetadata"]["Error"]["Code"] == "InvalidActionOrVersion"


# ----------------------------------------------------------------------------- V4 strictness (issue 29, item 7)


def _sign(
    body: bytes,
    signed: list[str],
    *,
    content_sha: str | None = None,
    region: str = "cn-north-1",
    host: str = "visual.test",
    access_key: str = "ak",
    secret_key: str = "sk",
) -> dict[str, str]:
    """Headers of a request signed with Volcengine V4 (upstream_apis.md §2.3) over ``signed`` headers only."""
    x_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    headers = {
        "content-type": "application/json",
        "host": host,
        "x-date": x_date,
        "x-content-sha256": content_sha or hashlib.sha256(body).hexdigest(),
    }
    canonical = "\n".join(
        [
            "POST",
            "/",
            "Action=CVProcess&Version=2022-08-31",
            "".join(f"{name}:{headers[name]}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    date = x_date[:8]
    scope = f"{date}/{region}/cv/request"
    to_sign = "\n".join(["HMAC-SHA256", x_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = hmac.new(secret_key.encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, "cv", "request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    return headers


def _verify(body: bytes, headers: dict[str, str]) -> str | None:
    return verify_signature("POST", "/", "Action=CVProcess&Version=2022-08-31", headers, body, "ak", "sk")


ALL_SIGNED = ["content-type", "host", "x-content-sha256", "x-date"]


def test_v4_test_signer_agrees_with_the_verifier() -> None:
    body = b'{"req_key": "x"}'
    assert _verify(body, _sign(body, ALL_SIGNED)) is None
    assert _verify(body, _sign(body, ["content-type", "host", "x-date"])) is None


def test_v4_refuses_a_false_content_sha256() -> None:
    """The header is not signed here, so the signature itself is valid: only the body-hash check can refuse it."""
    body = b'{"req_key": "x"}'
    headers = _sign(body, ["content-type", "host", "x-date"], content_sha=hashlib.sha256(b"other").hexdigest())
    assert _verify(body, headers) == "SignatureDoesNotMatch"


@pytest.mark.parametrize("missing", ["host", "x-date"])
def test_v4_refuses_signed_headers_without_host_or_x_date(missing: str) -> None:
    body = b'{"req_key": "x"}'
    signed = [name for name in ALL_SIGNED if name != missing]
    assert _verify(body, _sign(body, signed)) == "SignatureDoesNotMatch"


def test_v4_refuses_a_foreign_credential_scope() -> None:
    body = b'{"req_key": "x"}'
    assert _verify(body, _sign(body, ALL_SIGNED, region="cn-beijing")) == "SignatureDoesNotMatch"


def test_v4_false_content_sha256_over_http(sim: SimulatorThread) -> None:
    body = json.dumps(image_form("a cat")).encode()
    url = sim.url + "/?Action=CVProcess&Version=2022-08-31"
    host = sim.url.removeprefix("http://")
    signed = ["content-type", "host", "x-date"]
    good = _sign(body, signed, host=host, access_key=VOLC_AK, secret_key=VOLC_SK)
    assert httpx.post(url, content=body, headers=good, trust_env=False).status_code == 200
    bad = _sign(body, signed, host=host, access_key=VOLC_AK, secret_key=VOLC_SK, content_sha="0" * 64)
    refused = httpx.post(url, content=body, headers=bad, trust_env=False)
    assert refused.status_code == 401
    assert refused.json()["ResponseMetadata"]["Error"]["Code"] == "SignatureDoesNotMatch"
