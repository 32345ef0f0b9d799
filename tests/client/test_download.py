"""How a download names an inline (b64_json) image: by the stored copy's type, else by its first bytes (fast tier)."""

from __future__ import annotations

import pytest
from aitask_client import Output, Task
from aitask_client._download import _image_extension

TASK = Task(id="01M8YD1QTGJ9GA5P7SCC6WMZZZ", type="image", status="completed", user_id="u", provider="p", model="m")
PNG, JPEG, WEBP = b"\x89PNG\r\n\x1a\n....", b"\xff\xd8\xff\xe0....", b"RIFF\x00\x00\x00\x00WEBPVP8 "


@pytest.mark.parametrize(("image", "extension"), [(PNG, ".png"), (JPEG, ".jpg"), (WEBP, ".webp"), (b"?", ".png")])
def test_the_first_bytes_name_the_format(image: bytes, extension: str) -> None:
    assert _image_extension(TASK, image) == extension


def test_the_stored_copys_type_wins() -> None:
    stored = Task(**{**TASK.__dict__, "output": Output(4, "image/jpeg", "0" * 64, None)})
    assert _image_extension(stored, PNG) == ".jpg"
