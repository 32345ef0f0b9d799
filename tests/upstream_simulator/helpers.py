"""Assertion helpers for the simulator tests (PNG/MP4 checks, visual SDK error parsing)."""

from __future__ import annotations

import ast
import json
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import httpx

# Credentials the shared test simulator is configured with.
ARK_KEY = "test-ark-key"
OPENAI_KEY = "test-openai-key"
VOLC_AK, VOLC_SK = "test-ak", "test-sk"


def decode_png(data: bytes) -> tuple[int, int]:
    """Validate a PNG (signature, chunk CRCs, IHDR, IDAT size) and return (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, {}
    idat = b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.setdefault(kind, body)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert list(chunks)[0] == b"IHDR" and b"IEND" in chunks
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour_type) == (1, 3)
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + (width + 7) // 8)
    return width, height


def is_mp4(data: bytes) -> bool:
    """True when ``data`` starts with an ISO-BMFF ``ftyp`` box."""
    return len(data) > 12 and data[4:8] == b"ftyp"


def visual_error(exc: BaseException) -> dict[str, Any]:
    """Recover the JSON body from the plain Exception the visual SDK raises on HTTP != 200."""
    return json.loads(ast.literal_eval(str(exc)))


def png_palette(data: bytes) -> bytes:
    """The PLTE chunk body of a PNG written by the simulator (its colours)."""
    pos = data.index(b"PLTE")
    (length,) = struct.unpack(">I", data[pos - 4 : pos])
    return data[pos + 4 : pos + 4 + length]


def fetch(url: str) -> httpx.Response:
    """GET a media URL returned by the simulator (no proxy), asserting HTTP 200."""
    response = httpx.get(url, trust_env=False, timeout=10)
    assert response.status_code == 200, response.text
    return response


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(interval)
