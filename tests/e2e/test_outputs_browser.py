"""A real browser uses the output links (issue 18): headless Chromium (Debian's `chromium`) loads a page whose
<img> and <video> point at signed links through Envoy, with no API key: the image decodes, the video's metadata
loads and a seek into its middle completes (Range requests)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from devstack.stack import LocalStack
from tests.e2e.helpers import SEEDREAM
from tests.e2e.test_outputs import JIMENG_VIDEO, completed, create

CHROMIUM = shutil.which("chromium")
PAGE = """<!doctype html>
<img id="image" src="{image}">
<video id="video" src="{video}" muted preload="auto"></video>
<pre id="result">pending</pre>
<script>
const seen = {{}};
const show = () => {{
  if ("image" in seen && "video" in seen) document.getElementById("result").textContent = JSON.stringify(seen);
}};
const image = document.getElementById("image"), video = document.getElementById("video");
image.onload = () => {{ seen.image = [image.naturalWidth, image.naturalHeight]; show(); }};
image.onerror = () => {{ seen.image = "error"; show(); }};
video.onloadedmetadata = () => {{ video.currentTime = video.duration / 2; }};
video.onseeked = () => {{
  seen.video = [video.videoWidth, video.videoHeight, video.duration, video.currentTime]; show();
}};
video.onerror = () => {{ seen.video = "error " + (video.error && video.error.code); show(); }};
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install-deps.sh installs it)")
def test_img_and_video_tags_load_and_seek_by_signed_link(
    stack: LocalStack, rest: httpx.Client, user_id: str, tmp_path: Path
) -> None:
    image = completed(rest, create(rest, "image", user_id, **SEEDREAM, size="1024x1024"))["image_url"]
    video = completed(rest, create(rest, "video", user_id, **JIMENG_VIDEO, aspect_ratio="16:9"))["video_url"]
    page = tmp_path / "outputs.html"
    page.write_text(PAGE.format(image=image, video=video))

    def page_result() -> str | None:
        dumped = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required",
                "--virtual-time-budget=30000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1"},
        )
        found = re.search(r'<pre id="result">(.*?)</pre>', dumped.stdout, re.S)
        assert found is not None, dumped.stdout[-2000:] + dumped.stderr[-2000:]
        # On a loaded machine the budget can run out before the media events (the page still says "pending"):
        # a load that failed says "error" instead.
        return None if found.group(1) == "pending" else found.group(1)

    result = next((result for result in (page_result() for _ in range(3)) if result is not None), None)
    assert result is not None, "the page was still loading when the browser dumped it, three times"
    seen = json.loads(result)
    assert seen["image"] == [1024, 1024], seen
    width, height, duration, position = seen["video"]
    assert width > 0 and height > 0 and duration > 0 and position == pytest.approx(duration / 2, rel=0.05), seen
