"""Generated media: real PNG images and small MP4-like video blobs, served at ``/files/{name}``.

Nothing is stored. A file name encodes everything needed to regenerate its
bytes (size and colours for images, a token for videos), so a million
generated URLs cost no memory. PNGs are 1-bit palette images: the pixel data
depends only on the size (and is cached), the colours live in the palette, so
even a 2048x2048 image costs microseconds to produce.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import struct
import zlib
from functools import lru_cache

from aiohttp import web

MAX_DIMENSION = 4096  # refuse absurd sizes in /files names rather than allocate them
_IMAGE_NAME = re.compile(r"^img-(\d{1,4})x(\d{1,4})-([0-9a-f]{6})-([0-9a-f]{6})-[0-9a-z]{1,32}\.png$")
_VIDEO_NAME = re.compile(r"^vid-([0-9a-z]{1,64})\.mp4$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Rgb = tuple[int, int, int]


def colours_for(key: str) -> tuple[Rgb, Rgb]:
    """Two distinct colours derived from ``key`` (e.g. prompt + seed): background and accent."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    background = (digest[0], digest[1], digest[2])
    accent = (255 - digest[0], 255 - digest[1], (digest[2] + 128) % 256)
    return background, accent


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=256)
def _idat(width: int, height: int) -> bytes:
    """Compressed pixel data: palette index 0 everywhere, index 1 in a centred rectangle."""
    row_bytes = (width + 7) // 8
    x0, x1 = width // 4, width - width // 4
    y0, y1 = height // 4, height - height // 4
    bits = ((1 << (x1 - x0)) - 1) << (row_bytes * 8 - x1) if x1 > x0 else 0
    plain = b"\x00" + bytes(row_bytes)  # filter byte 0 + all-background pixels
    marked = b"\x00" + bits.to_bytes(row_bytes, "big")
    raw = plain * y0 + marked * (y1 - y0) + plain * (height - y1)
    return zlib.compress(raw, 9)


def png_bytes(width: int, height: int, background: Rgb, accent: Rgb) -> bytes:
    """A valid ``width``x``height`` PNG (1-bit palette) in the two given colours."""
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        raise ValueError(f"bad image size {width}x{height}")
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)  # depth 1, colour type 3 (palette)
    plte = bytes(background) + bytes(accent)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"PLTE", plte)
        + _chunk(b"IDAT", _idat(width, height))
        + _chunk(b"IEND", b"")
    )


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def mp4_bytes(token: str) -> bytes:
    """A small MP4-like blob: ``ftyp`` box, ``free`` box and an ``mdat`` of bytes derived from ``token``."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41")
    seed = hashlib.sha256(token.encode("ascii")).digest()
    payload = b"".join(hashlib.sha256(seed + i.to_bytes(2, "big")).digest() for i in range(64))
    return ftyp + _box(b"free", b"") + _box(b"mdat", payload)


def new_token() -> str:
    """A random lowercase token that makes each generated URL unique."""
    return secrets.token_hex(8)


def image_name(width: int, height: int, key: str) -> str:
    """A file name for a ``width``x``height`` image whose colours derive from ``key``."""
    background, accent = colours_for(key)
    return f"img-{width}x{height}-{bytes(background).hex()}-{bytes(accent).hex()}-{new_token()}.png"


def video_name() -> str:
    """A file name for a new generated video."""
    return f"vid-{new_token()}.mp4"


def image_for_name(name: str) -> bytes | None:
    """Regenerate the PNG bytes for an ``image_name`` result (None if the name is not one)."""
    match = _IMAGE_NAME.match(name)
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        return None
    return png_bytes(width, height, _rgb(match.group(3)), _rgb(match.group(4)))


def _rgb(hex_colour: str) -> Rgb:
    red, green, blue = bytes.fromhex(hex_colour)
    return red, green, blue


def image_b64(width: int, height: int, key: str) -> str:
    """Base64 of a PNG like ``image_name`` would serve (for ``b64_json`` responses)."""
    background, accent = colours_for(key)
    return base64.b64encode(png_bytes(width, height, background, accent)).decode("ascii")


def video_for_name(name: str) -> bytes | None:
    """Regenerate the video bytes for a ``video_name`` result (None if the name is not one)."""
    match = _VIDEO_NAME.match(name)
    return mp4_bytes(match.group(1)) if match else None


async def serve_file(request: web.Request) -> web.Response:
    """``GET /files/{name}``: the generated image or video, or 404 for unknown names."""
    name = request.match_info["name"]
    body = image_for_name(name)
    if body is not None:
        return web.Response(body=body, content_type="image/png")
    body = video_for_name(name)
    if body is not None:
        return web.Response(body=body, content_type="video/mp4")
    return web.Response(status=404, text="NoSuchKey: The specified key does not exist.")
