"""Media as the vendors serve it: Ark images as JPEG, a video that decodes, links that expire (403) and 404 for
names never issued, OpenAI's expires_at enforced (issue 29, item 4)."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark

from tests.upstream_simulator.helpers import decode_jpeg, fetch, is_mp4, mp4_boxes, wait_for
from upstream_simulator import SimulatorThread, media
from upstream_simulator.control import SimulatorControl

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
SEEDREAM = "doubao-seedream-3-0-t2i-250415"
SEEDANCE = "doubao-seedance-1-0-pro-250528"


def _decode_rgb(data: bytes, suffix: str) -> bytes:
    """Decode an image or video with ffmpeg to raw RGB (its first frame); fail if ffmpeg cannot.

    ffmpeg is Debian's (scripts/install-deps.sh installs it for the tests): a decoder the vendors' clients use,
    not ours."""
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
        input=data,
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout


@pytest.mark.parametrize(("width", "height"), [(1, 1), (13, 7), (1024, 768), (2048, 2048)])
def test_jpeg_encoder_decodes_to_the_requested_colour(width: int, height: int) -> None:
    colour = (12, 200, 77)
    data = media.jpeg_bytes(width, height, colour)
    assert decode_jpeg(data) == (width, height)
    pixels = _decode_rgb(data, ".jpg")
    assert len(pixels) == width * height * 3
    # Every pixel is the colour, give or take the YCbCr rounding.
    for index in (0, len(pixels) // 2 - len(pixels) // 2 % 3, len(pixels) - 3):
        assert all(abs(a - b) <= 2 for a, b in zip(pixels[index : index + 3], colour, strict=True))


def test_ark_image_is_a_jpeg_that_decodes(ark: Ark) -> None:
    resp = ark.images.generate(model=SEEDREAM, prompt="a fox", size="864x1152", seed=5, response_format="url")
    image = fetch(resp.data[0].url)
    assert image.headers["Content-Type"] == "image/jpeg"
    assert len(_decode_rgb(image.content, ".jpg")) == 864 * 1152 * 3


def test_the_video_fixture_is_a_small_mp4_with_moov() -> None:
    data = media.mp4_bytes()
    assert 1_000 < len(data) < 10_000  # a few KB
    assert mp4_boxes(data)[:2] == [b"ftyp", b"moov"]  # moov first: playable while it downloads
    assert is_mp4(data)


def test_generated_videos_decode(oai: OpenAI, ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("*", video_seconds=0)
    video = oai.videos.create(model="sora-2", prompt="a cat")
    wait_for(lambda: oai.videos.retrieve(video.id).status == "completed")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=codec_name,nb_read_frames",
         "-of", "csv=p=0", "pipe:"],
        input=oai.videos.download_content(video.id).content, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    codec, frames = probe.stdout.decode().strip().split(",")
    assert codec == "h264" and int(frames) > 1
    task = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "x"}])
    url = wait_for(lambda: (t := ark.content_generation.tasks.get(task_id=task.id)).status == "succeeded" and t)
    assert len(_decode_rgb(fetch(url.content.video_url).content, ".mp4")) == 160 * 90 * 3


def test_links_expire_with_403_after_their_lifetime(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.images", url_lifetime_s=1)
    url = ark.images.generate(model=SEEDREAM, prompt="a cat").data[0].url
    assert fetch(url).content.startswith(media.JPEG_SIGNATURE)
    expires = int(httpx.URL(url).params["X-Expires"])
    assert expires - time.time() <= 2  # whole seconds, rounded up
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    expired = httpx.get(url, trust_env=False)
    assert expired.status_code == 403
    assert expired.json()["Code"] == "AccessDenied" and "expired" in expired.json()["Message"]


def test_default_lifetimes_are_the_vendors(ark: Ark, oai: OpenAI, control: SimulatorControl) -> None:
    ark_url = ark.images.generate(model=SEEDREAM, prompt="a cat").data[0].url
    assert abs(int(httpx.URL(ark_url).params["X-Expires"]) - time.time() - 24 * 3600) < 5
    # OpenAI's images answer base64 only since DALL-E's retirement; its videos' assets live an hour.
    control.set_faults("openai.videos.create", video_seconds=0)
    video = oai.videos.retrieve(oai.videos.create(model="sora-2", prompt="a cat").id)
    assert video.expires_at == video.completed_at + 3600


def test_names_never_issued_are_404_and_altered_links_403(sim: SimulatorThread, ark: Ark) -> None:
    url = httpx.URL(ark.images.generate(model=SEEDREAM, prompt="a cat").data[0].url)
    name = url.path.rsplit("/", 1)[1]
    # A well-formed name this simulator never issued (the old simulator served any such name).
    forged = name.replace("img-1024x1024", "img-1024x1016")
    assert httpx.get(url.copy_with(path=f"/files/{forged}"), trust_env=False).status_code == 404
    assert httpx.get(sim.url + "/files/nope.png", trust_env=False).json()["Code"] == "NoSuchKey"
    # The issued name with its expiry pushed back, or with no signature at all.
    later = url.copy_set_param("X-Expires", str(int(url.params["X-Expires"]) + 3600))
    refused = httpx.get(later, trust_env=False)
    assert refused.status_code == 403 and refused.json()["Code"] == "SignatureDoesNotMatch"
    assert httpx.get(url.copy_with(query=None), trust_env=False).status_code == 403


def test_visual_links_expire_too(visual: VisualService, control: SimulatorControl) -> None:
    control.set_faults("visual.CVProcess", url_lifetime_s=1)
    form = {"req_key": "jimeng_high_aes_general_v21_L", "prompt": "a cat", "return_url": True, "use_sr": False}
    url = visual.cv_process(form)["data"]["image_urls"][0]
    assert fetch(url).status_code == 200
    time.sleep(max(0.0, int(httpx.URL(url).params["X-Expires"]) - time.time()) + 0.05)
    assert httpx.get(url, trust_env=False).status_code == 403


def test_openai_expires_at_is_enforced(oai: OpenAI, control: SimulatorControl) -> None:
    control.set_faults("openai.videos.create", video_seconds=0, url_lifetime_s=1)
    video = oai.videos.create(model="sora-2", prompt="a cat")
    done = oai.videos.retrieve(video.id)
    assert done.status == "completed" and done.expires_at == done.completed_at + 1
    assert is_mp4(oai.videos.download_content(video.id).content)
    time.sleep(max(0.0, done.expires_at - time.time()) + 0.05)
    with pytest.raises(openai.NotFoundError, match="expired"):
        oai.videos.download_content(video.id)
    assert oai.videos.retrieve(video.id).status == "completed"  # the job itself is still there


def test_ark_video_link_lives_from_the_task_end(ark: Ark, control: SimulatorControl) -> None:
    control.set_faults("ark.tasks.create", video_seconds=0, url_lifetime_s=1)
    task = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "x"}])
    first = ark.content_generation.tasks.get(task_id=task.id).content.video_url
    assert is_mp4(fetch(first).content)
    # Every read gives the same link: it was presigned when the task finished.
    assert ark.content_generation.tasks.get(task_id=task.id).content.video_url == first
    time.sleep(max(0.0, int(httpx.URL(first).params["X-Expires"]) - time.time()) + 0.05)
    assert httpx.get(first, trust_env=False).status_code == 403


def test_fixture_file_is_in_the_package() -> None:
    assert Path(media.__file__).with_name("fixtures") / "video.mp4" == media.VIDEO_FIXTURE
    assert media.VIDEO_FIXTURE.is_file()


def test_b64_jpeg_round_trip_is_deterministic() -> None:
    one = base64.b64decode(media.image_b64(64, 64, "k", "jpeg"))
    assert one == base64.b64decode(media.image_b64(64, 64, "k", "jpeg"))
    assert one != base64.b64decode(media.image_b64(64, 64, "other", "jpeg"))
