"""The simulator refuses what the vendor refuses: models it does not serve (or retired), unknown parameters,
parameters a model does not take, bodies that are not JSON (issue 29, items 1 and 2)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import image_generate_params
from openai.types.chat import completion_create_params
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkBadRequestError, ArkNotFoundError

from aitask_common.provider import load_catalogue
from tests.upstream_simulator.helpers import ARK_KEY, OPENAI_KEY, decode_jpeg, decode_png, visual_error
from upstream_simulator import SimulatorSettings, SimulatorThread, ark, openai_api
from upstream_simulator.catalogue import DEFAULT_PATH, Catalogue

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

SEEDREAM3 = "doubao-seedream-3-0-t2i-250415"
SEEDREAM4 = "doubao-seedream-4-0-250828"
CHAT = "doubao-1-5-pro-32k-250115"
HI = [{"role": "user", "content": "hi"}]


# ----------------------------------------------------------------------------- models (item 1)


def test_openai_chat_refuses_a_model_it_does_not_serve(oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-totally-made-up", messages=HI)
    assert info.value.code == "model_not_found"
    assert "gpt-totally-made-up" in info.value.message


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4-0314", "gpt-3.5-turbo", "o1-mini"])
def test_openai_chat_refuses_retired_models_as_deprecated(oai: OpenAI, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model=model, messages=HI)
    assert info.value.code == "model_not_found"
    assert f"The model `{model}` has been deprecated" in info.value.message


def test_retired_image_and_video_models_are_refused(oai: OpenAI) -> None:
    for model in ("dall-e-3", "dall-e-2", "gpt-image-1"):
        with pytest.raises(openai.NotFoundError, match="has been deprecated"):
            oai.images.generate(model=model, prompt="a cat")
    with pytest.raises(openai.NotFoundError, match="has been deprecated"):
        oai.videos.create(model="sora-2-pro", prompt="a cat")


def test_sora_2_is_served_in_grace_and_refused_without_it() -> None:
    """sora-2 is retired; only the simulator's and the provider's own video tests use it (the gateway refuses it)."""
    for grace in (True, False):
        settings = SimulatorSettings(port=0, openai_api_key=OPENAI_KEY, retired_grace=grace)
        with SimulatorThread(settings) as sim:
            client = OpenAI(api_key=OPENAI_KEY, base_url=sim.url + "/v1", max_retries=0)
            if grace:
                client.videos.create(model="sora-2", prompt="a cat")
            else:
                with pytest.raises(openai.NotFoundError, match="has been deprecated"):
                    client.videos.create(model="sora-2", prompt="a cat")
            # The gateway's retired seed names are no longer in grace: it sends their successors.
            with pytest.raises(openai.NotFoundError, match="has been deprecated"):
                client.chat.completions.create(model="gpt-4", messages=HI)
            with pytest.raises(openai.NotFoundError, match="has been deprecated"):
                client.images.generate(model="dall-e-3", prompt="a cat")
            client.chat.completions.create(model="gpt-5.5", messages=HI)


def test_catalogue_retires_on_the_shutdown_date() -> None:
    catalogue = Catalogue.load()
    assert catalogue.lookup("openai", "chat", "gpt-5", dt.date(2026, 12, 10)).status == "served"
    assert catalogue.lookup("openai", "chat", "gpt-5", dt.date(2026, 12, 11)).status == "retired"
    assert catalogue.lookup("openai", "chat", "gpt-5.5", dt.date(2030, 1, 1)).status == "served"
    assert catalogue.lookup("openai", "images", "gpt-5.5").status == "unknown"  # a chat model is not an image model
    assert catalogue.lookup("ark", "images", "ep-20250101-abc").entry.family == "seedream-3"
    assert catalogue.lookup("openai", "chat", "ep-20250101-abc").status == "unknown"


def test_every_seed_model_of_the_gateway_is_served() -> None:
    """The seed models of provider_*/catalogue.toml must keep working against the simulator."""
    catalogue = Catalogue.load()
    for vendor, api, name in [
        ("ark", "images", "doubao-seedream-3-0-t2i-250415"),
        ("ark", "chat", "doubao-pro-4k"),
        ("visual", "CVProcess", "jimeng_high_aes_general_v21_L"),
        ("visual", "CVSync2Async", "jimeng_vgfm_t2v_l20"),
    ]:
        assert catalogue.lookup(vendor, api, name).status == "served", name
    # What provider_openai sends: each listed model's own name, or the successor it is an alias of. None of it
    # may need grace: only sora / sora-2 (retired, refused by the gateway) would, and they are never sent.
    strict = Catalogue.load(retired_grace=False)
    for model in load_catalogue(ROOT / "provider_openai" / "catalogue.toml").models:
        if not model.retired:
            api = model.upstream_api.removeprefix("openai.")
            assert strict.lookup("openai", api, model.upstream_model or model.name).status == "served", model.name


def test_ark_refuses_models_it_does_not_serve(ark: Ark) -> None:
    with pytest.raises(ArkNotFoundError) as info:
        ark.chat.completions.create(model="doubao-made-up", messages=HI)
    assert info.value.code == "InvalidEndpointOrModel.NotFound"
    # Any name containing "seedream" used to pass.
    with pytest.raises(ArkNotFoundError):
        ark.images.generate(model="doubao-seedream-9-9-999999", prompt="a cat")
    with pytest.raises(ArkNotFoundError):
        ark.content_generation.tasks.create(model="my-seedance", content=[{"type": "text", "text": "x"}])


def test_visual_refuses_an_unknown_req_key(visual: VisualService) -> None:
    with pytest.raises(Exception) as info:
        visual.cv_process({"req_key": "jimeng_made_up", "prompt": "a cat"})
    body = visual_error(info.value)
    assert body["code"] == 50200 and "req_key" in body["message"]


# ----------------------------------------------------------------------------- parameters (item 2)


def test_openai_chat_refuses_unknown_parameters(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="gpt-5.5", messages=HI, extra_body={"max_tokenz": 5})
    assert info.value.body["message"] == "Unrecognized request argument supplied: max_tokenz"
    assert info.value.type == "invalid_request_error"


def test_openai_images_and_videos_refuse_unknown_parameters(oai: OpenAI, sim: SimulatorThread) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.images.generate(model="gpt-image-2.5-flare", prompt="a cat", extra_body={"sise": "1024x1024"})
    assert (info.value.code, info.value.param, info.value.message) == (
        "unknown_parameter", "sise", "Error code: 400 - Unknown parameter: 'sise'."
    )  # fmt: skip
    response = httpx.post(
        sim.url + "/v1/videos",
        headers={"Authorization": f"Bearer {OPENAI_KEY}"},
        data={"prompt": "a cat", "duration": "8"},
        files={"input_reference": ("ref.png", b"\x89PNG", "image/png")},
        trust_env=False,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "duration"


def test_reasoning_models_refuse_max_tokens(oai: OpenAI) -> None:
    for model in ("gpt-5.5", "gpt-5.4-mini"):
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(model=model, messages=HI, max_tokens=5)
        assert (info.value.param, info.value.code) == ("max_tokens", "unsupported_parameter")
        assert "Use 'max_completion_tokens' instead." in info.value.message
        reply = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "x " * 50}],
                                            max_completion_tokens=5)  # fmt: skip
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens <= 5


def test_chat_models_take_max_tokens_and_refuse_reasoning_effort(tmp_path: Path) -> None:
    # Every OpenAI chat-family model has a shutdown date (gpt-4.1 and gpt-4o on 2027-01-14): a probe model
    # without one keeps this test independent of the calendar.
    catalogue = tmp_path / "catalogue.toml"
    probe = '\n[[openai.models]]\nnames = ["chat-family-probe"]\napi = "chat"\nfamily = "chat"\n'
    catalogue.write_text(DEFAULT_PATH.read_text(encoding="utf-8") + probe, encoding="utf-8")
    with SimulatorThread(SimulatorSettings(port=0, openai_api_key=OPENAI_KEY, catalogue_path=catalogue)) as sim:
        client = OpenAI(api_key=OPENAI_KEY, base_url=sim.url + "/v1", max_retries=0)
        client.chat.completions.create(model="chat-family-probe", messages=HI, max_tokens=5)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="chat-family-probe", messages=HI, reasoning_effort="low")
    assert info.value.param == "reasoning_effort"


@pytest.mark.parametrize(
    ("model", "kwargs", "param", "code"),
    [
        ("gpt-image-2.5-sunburst", {"response_format": "url"}, "response_format", "unknown_parameter"),
        ("gpt-image-2.5-sunburst", {"style": "vivid"}, "style", "unknown_parameter"),
        ("gpt-image-2.5-sunburst", {"quality": "hd"}, "quality", "invalid_value"),
        ("gpt-image-2.5-sunburst", {"size": "1000x1000"}, "size", "invalid_value"),  # not multiples of 16
        ("gpt-image-2.5-sunburst", {"size": "3200x800"}, "size", "invalid_value"),  # 4:1
        ("gpt-image-2.6-flare", {"size": "1536x864"}, "size", "invalid_value"),  # free sizes: 2 / 2.5 only
    ],
)
def test_openai_image_parameters_per_model(
    oai: OpenAI, model: str, kwargs: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.images.generate(model=model, prompt="a cat", **kwargs)
    assert (info.value.param, info.value.code) == (param, code)


def test_gpt_image_2_5_takes_free_sizes_and_jpeg(oai: OpenAI) -> None:
    resp = oai.images.generate(model="gpt-image-2.5-sunburst", prompt="a cat", size="1536x864", quality="xhigh")
    assert decode_png(base64.b64decode(resp.data[0].b64_json)) == (1536, 864)
    resp = oai.images.generate(model="gpt-image-2.5-flare", prompt="a cat", output_format="jpeg")
    assert decode_jpeg(base64.b64decode(resp.data[0].b64_json)) == (1024, 1024)
    assert resp.output_format == "jpeg"


def test_ark_refuses_unknown_parameters(ark: Ark) -> None:
    with pytest.raises(ArkBadRequestError) as info:
        ark.images.generate(model=SEEDREAM3, prompt="a cat", extra_body={"negative_prompt": "dogs"})
    assert (info.value.code, info.value.param) == ("InvalidParameter", "negative_prompt")
    with pytest.raises(ArkBadRequestError) as info:
        ark.chat.completions.create(model=CHAT, messages=HI, extra_body={"max_token": 5})
    assert info.value.param == "max_token"


def test_seedream_4_rules_instead_of_3_0s(ark: Ark) -> None:
    resp = ark.images.generate(model=SEEDREAM4, prompt="a cat", size="2K", response_format="b64_json")
    assert decode_jpeg(base64.b64decode(resp.data[0].b64_json)) == (2048, 2048)
    resp = ark.images.generate(model=SEEDREAM4, prompt="a cat", size="2560x1440", response_format="b64_json",
                               sequential_image_generation="disabled", image=["https://example.com/a.png"])  # fmt: skip
    assert resp.data[0].size == "2560x1440"  # over 3.0's 2048 limit, within 4.x's pixel range
    for kwargs, param in [
        ({"seed": 1}, "seed"),  # 4.x takes no seed or guidance_scale
        ({"guidance_scale": 3.0}, "guidance_scale"),
        ({"size": "1024x512"}, "size"),  # fewer pixels than 1280x720
        ({"size": "4096x200"}, "size"),  # wider than 16:1
        ({"sequential_image_generation": "always"}, "sequential_image_generation"),
    ]:
        with pytest.raises(ArkBadRequestError) as info:
            ark.images.generate(model=SEEDREAM4, prompt="a cat", **kwargs)
        assert info.value.param == param, kwargs
    # And 3.0 refuses 4.x's parameters.
    with pytest.raises(ArkBadRequestError) as info:
        ark.images.generate(model=SEEDREAM3, prompt="a cat", sequential_image_generation="auto")
    assert info.value.param == "sequential_image_generation"


@pytest.mark.parametrize(
    ("model", "content", "kwargs", "param"),
    [
        ("doubao-seedance-1-0-lite-t2v-250428", "image", {}, "content"),
        ("doubao-seedance-1-0-lite-i2v-250428", "text", {}, "content"),
        ("doubao-seedance-1-0-lite-t2v-250428", "text", {"duration": 7}, "duration"),
        ("doubao-seedance-1-0-pro-250528", "text", {"duration": 13}, "duration"),
        ("doubao-seedance-1-0-pro-250528", "text", {"generate_audio": True}, "generate_audio"),
        ("doubao-seedance-1-5-pro-251215", "text", {"duration": 3}, "duration"),
    ],
)
def test_seedance_rules_per_model(ark: Ark, model: str, content: str, kwargs: dict[str, Any], param: str) -> None:
    items: list[dict[str, Any]] = [{"type": "text", "text": "a dog"}]
    if content == "image":
        items.append({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}, "role": "first_frame"})
    with pytest.raises(ArkBadRequestError) as info:
        ark.content_generation.tasks.create(model=model, content=items, **kwargs)
    assert info.value.param == param


def test_seedance_accepts_what_each_model_takes(ark: Ark) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}, "role": "first_frame"}
    text = {"type": "text", "text": "a dog"}
    ark.content_generation.tasks.create(model="doubao-seedance-1-0-pro-250528", content=[text], duration=7)
    ark.content_generation.tasks.create(model="doubao-seedance-1-0-lite-i2v-250428", content=[text, image])
    ark.content_generation.tasks.create(
        model="doubao-seedance-1-5-pro-251215", content=[text], generate_audio=True, duration=12
    )


def test_json_endpoints_need_a_json_content_type(sim: SimulatorThread) -> None:
    body = json.dumps({"model": "gpt-5.5", "messages": HI}).encode()
    for path, key in [("/v1/chat/completions", OPENAI_KEY), ("/api/v3/chat/completions", ARK_KEY)]:
        for content_type in ("text/plain", None):
            headers = {"Authorization": f"Bearer {key}"}
            if content_type:
                headers["Content-Type"] = content_type
            response = httpx.post(sim.url + path, content=body, headers=headers, trust_env=False)
            assert response.status_code == 400, (path, content_type)
            assert "error" in response.json()
        ok = httpx.post(
            sim.url + path,
            json={"model": "gpt-5.5" if "v1" in path else CHAT, "messages": HI},
            headers={"Authorization": f"Bearer {key}"},
            trust_env=False,
        )
        assert ok.status_code == 200


# ----------------------------------------------------------------------------- in step with the SDKs


def test_openai_parameter_sets_match_the_installed_sdk() -> None:
    chat = set(completion_create_params.CompletionCreateParamsBase.__annotations__) | {"stream"}
    assert chat == openai_api.CHAT_PARAMS
    images = set(image_generate_params.ImageGenerateParamsBase.__annotations__) | {"stream"}
    assert images == openai_api.IMAGE_PARAMS


def test_ark_parameter_sets_match_what_the_sdk_sends() -> None:
    """Capture the bodies the real Ark SDK sends; every key must be one the simulator accepts, and back."""
    bodies: dict[str, set[str]] = {}

    def capture(request: httpx.Request) -> httpx.Response:
        bodies[request.url.path] = set(json.loads(request.content))
        return httpx.Response(200, json={"id": "x", "data": [], "choices": []})

    client = Ark(api_key="k", base_url="http://ark.test/api/v3", http_client=httpx.Client(
        transport=httpx.MockTransport(capture)), max_retries=0)  # fmt: skip
    client.images.generate(model="m", prompt="p")
    client.chat.completions.create(model="m", messages=HI)
    client.content_generation.tasks.create(model="m", content=[{"type": "text", "text": "x"}])
    assert bodies["/api/v3/images/generations"] | {"stream"} == ark.IMAGE_PARAMS
    assert bodies["/api/v3/chat/completions"] == ark.CHAT_PARAMS
    assert bodies["/api/v3/contents/generations/tasks"] == ark.TASK_PARAMS
