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


def decode_jpeg(data: bytes) -> tuple[int, int]:
    """Validate a baseline JPEG's structure (SOI, segments, SOF0, SOS, EOI) and return (width, height)."""
    assert data[:2] == b"\xff\xd8", "not a JPEG (no SOI)"
    assert data[-2:] == b"\xff\xd9", "no EOI: truncated JPEG"
    pos, size = 2, None
    while True:
        marker, length = data[pos : pos + 2], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        assert marker[0] == 0xFF, f"bad marker at {pos}"
        if marker == b"\xff\xc0":
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
        if marker == b"\xff\xda":
            break
        pos += 2 + length
    assert size is not None, "no SOF0"
    return size


def mp4_boxes(data: bytes) -> list[bytes]:
    """The top-level ISO-BMFF box types of ``data``, checking that their sizes add up to its length."""
    pos, boxes = 0, []
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        assert size >= 8, f"bad box size at {pos}"
        boxes.append(data[pos + 4 : pos + 8])
        pos += size
    assert pos == len(data), "box sizes do not add up to the file length"
    return boxes


def is_mp4(data: bytes) -> bool:
    """True when ``data`` is an MP4 a player can open: ``ftyp`` first, a ``moov`` and an ``mdat`` box."""
    boxes = mp4_boxes(data)
    return boxes[0] == b"ftyp" and b"moov" in boxes and b"mdat" in boxes


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
