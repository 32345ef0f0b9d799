"""Generated media served at ``/files/{name}``: real PNG and JPEG images, a real MP4, URLs that expire.

Nothing is stored. A file name encodes everything needed to regenerate its
bytes (size and colours for images) and ends with a MAC of itself, so only
names this simulator issued are served (any other is 404, as a bucket answers
for a key it does not hold). The URL's query carries its expiry and a MAC over
name and expiry, like the vendors' presigned links (Ark's and the visual API's
TOS URLs, OpenAI's image URLs): after it expires the link answers 403, and a
link whose expiry was altered answers 403 too. A million issued URLs cost no
memory.

* PNGs (OpenAI, visual API) are 1-bit palette images: the pixel data depends
  only on the size (and is cached), the colours live in the palette.
* JPEGs (Ark Seedream, whose URLs point at ``….jpeg`` files) are baseline
  JPEGs of one colour, written by a tiny encoder: every 8x8 block after the
  first is "same DC, no AC", so even a 4096x4096 image costs milliseconds.
* Every video is the same few-KB H.264 MP4 (``fixtures/video.mp4``, 1 s,
  160x90, made once with ffmpeg; ``moov`` before ``mdat``), which real players decode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import struct
import time
import zlib
from functools import lru_cache
from pathlib import Path

from aiohttp import web

from upstream_simulator.faults import Injection

MAX_DIMENSION = 4096  # refuse absurd sizes in /files names rather than allocate them
_IMAGE_NAME = re.compile(
    r"^(img-(\d{1,4})x(\d{1,4})-([0-9a-f]{6})-([0-9a-f]{6})-[0-9a-f]{16})-([0-9a-f]{20})\.(png|jpeg)$"
)
_VIDEO_NAME = re.compile(r"^(vid-[0-9a-f]{16})-([0-9a-f]{20})\.mp4$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
VIDEO_FIXTURE = Path(__file__).with_name("fixtures") / "video.mp4"

Rgb = tuple[int, int, int]


class MediaSigner:
    """Issues file names and presigned URLs, and checks them when they come back.

    ``secret`` must be stable across restarts of one deployment so that URLs
    issued before a restart stay valid (the server derives it from its keys).
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, text: str) -> str:
        return hmac.new(self._secret, text.encode("ascii"), hashlib.sha256).hexdigest()[:20]

    def image_name(self, width: int, height: int, key: str, fmt: str = "png") -> str:
        """A name for a ``width``x``height`` image (``png`` or ``jpeg``) whose colours derive from ``key``."""
        background, accent = colours_for(key)
        stem = f"img-{width}x{height}-{bytes(background).hex()}-{bytes(accent).hex()}-{new_token()}"
        return f"{stem}-{self._mac(stem + '.' + fmt)}.{fmt}"

    def video_name(self) -> str:
        """A name for a new generated video."""
        stem = f"vid-{new_token()}"
        return f"{stem}-{self._mac(stem + '.mp4')}.mp4"

    def issued(self, name: str) -> bool:
        """True when ``name`` is one this signer issued."""
        match = _IMAGE_NAME.match(name) or _VIDEO_NAME.match(name)
        if match is None:
            return False
        stem, mac = match.group(1), match.group(6) if match.re is _IMAGE_NAME else match.group(2)
        return hmac.compare_digest(mac, self._mac(stem + name[name.rindex(".") :]))

    def presign(self, name: str, expires_at: float) -> str:
        """The query string of a link to ``name`` valid until ``expires_at`` (unix seconds)."""
        expires = math.ceil(expires_at)  # never sooner than asked
        return f"X-Expires={expires}&X-Signature={self._mac(f'{name}|{expires}')}"

    def check(self, name: str, expires: str | None, signature: str | None, now: float | None = None) -> str | None:
        """Why a link may not be served (``NoSuchKey``, ``SignatureDoesNotMatch``, ``Expired``), or None."""
        if not self.issued(name):
            return "NoSuchKey"
        if not expires or not signature or not expires.isdigit():
            return "SignatureDoesNotMatch"
        if not hmac.compare_digest(signature, self._mac(f"{name}|{int(expires)}")):
            return "SignatureDoesNotMatch"
        if (time.time() if now is None else now) >= int(expires):
            return "Expired"
        return None


def colours_for(key: str) -> tuple[Rgb, Rgb]:
    """Two distinct colours derived from ``key`` (e.g. prompt + seed): background and accent."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    background = (digest[0], digest[1], digest[2])
    accent = (255 - digest[0], 255 - digest[1], (digest[2] + 128) % 256)
    return background, accent


def new_token() -> str:
    """A random lowercase token that makes each generated name unique."""
    return secrets.token_hex(8)


# ----------------------------------------------------------------------------- PNG


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


def _check_size(width: int, height: int) -> None:
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        raise ValueError(f"bad image size {width}x{height}")


def png_bytes(width: int, height: int, background: Rgb, accent: Rgb) -> bytes:
    """A valid ``width``x``height`` PNG (1-bit palette) in the two given colours."""
    _check_size(width, height)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)  # depth 1, colour type 3 (palette)
    plte = bytes(background) + bytes(accent)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"PLTE", plte)
        + _chunk(b"IDAT", _idat(width, height))
        + _chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- JPEG

# The standard luminance DC table (ITU T.81 K.3), used for all three components.
_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_DC_VALUES = tuple(range(12))
# An AC table holding one symbol, end-of-block (0x00), coded "0": no block has AC coefficients.
_AC_BITS = (1,) + (0,) * 15
_AC_VALUES = (0x00,)


def _huffman_codes(bits: tuple[int, ...], values: tuple[int, ...]) -> dict[int, str]:
    """Canonical Huffman codes (as bit strings) from a DHT table's counts and symbols."""
    codes, code, index = {}, 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[index]] = format(code, f"0{length}b")
            code += 1
            index += 1
        code <<= 1
    return codes


_DC_CODES = _huffman_codes(_DC_BITS, _DC_VALUES)
_EOB = _huffman_codes(_AC_BITS, _AC_VALUES)[0]


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _dc_bits(diff: int) -> str:
    """A DC difference: its category's code, then the category's bits (one's complement when negative)."""
    category = abs(diff).bit_length()
    extra = format(diff if diff >= 0 else diff + (1 << category) - 1, f"0{category}b") if category else ""
    return _DC_CODES[category] + extra


@lru_cache(maxsize=64)
def _jpeg_headers(width: int, height: int) -> bytes:
    dqt = b"".join(bytes([table]) + b"\x01" * 64 for table in (0, 1))  # quantiser 1: DC is exact
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    dht = b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALUES) + b"\x10" + bytes(_AC_BITS) + bytes(_AC_VALUES)
    sos = b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    return (
        b"\xff\xd8"
        + _segment(0xFFE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + _segment(0xFFDB, dqt)
        + _segment(0xFFC0, sof)
        + _segment(0xFFC4, dht)
        + _segment(0xFFDA, sos)
    )


def jpeg_bytes(width: int, height: int, colour: Rgb) -> bytes:
    """A valid baseline ``width``x``height`` JPEG (YCbCr 4:4:4) filled with ``colour``."""
    _check_size(width, height)
    red, green, blue = colour
    y = 0.299 * red + 0.587 * green + 0.114 * blue
    cb = 128 - 0.168736 * red - 0.331264 * green + 0.5 * blue
    cr = 128 + 0.5 * red - 0.418688 * green - 0.081312 * blue
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    # The first MCU sets each component's DC; every later block repeats it (difference 0) with no AC.
    first = "".join(_dc_bits(round(8 * (value - 128))) + _EOB for value in (y, cb, cr))
    bits = first + (_DC_CODES[0] + _EOB) * (3 * (blocks - 1))
    bits += "1" * (-len(bits) % 8)  # pad the last byte with ones
    scan = int(bits, 2).to_bytes(len(bits) // 8, "big").replace(b"\xff", b"\xff\x00")
    return _jpeg_headers(width, height) + scan + b"\xff\xd9"


# ----------------------------------------------------------------------------- MP4


@lru_cache(maxsize=1)
def mp4_bytes() -> bytes:
    """The generated video: an H.264 MP4 that decodes (``ftyp``, ``moov``, ``mdat``)."""
    return VIDEO_FIXTURE.read_bytes()


# ----------------------------------------------------------------------------- names to bytes


def _rgb(hex_colour: str) -> Rgb:
    red, green, blue = bytes.fromhex(hex_colour)
    return red, green, blue


def image_b64(width: int, height: int, key: str, fmt: str = "png") -> str:
    """Base64 of an image like ``image_name`` would serve (for ``b64_json`` responses)."""
    background, accent = colours_for(key)
    data = jpeg_bytes(width, height, background) if fmt == "jpeg" else png_bytes(width, height, background, accent)
    return base64.b64encode(data).decode("ascii")


def bytes_for_name(name: str) -> tuple[bytes, str] | None:
    """Regenerate the bytes and content type of an issued file name (None if ``name`` is not one)."""
    match = _IMAGE_NAME.match(name)
    if match is not None:
        width, height = int(match.group(2)), int(match.group(3))
        if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
            return None
        if match.group(7) == "jpeg":
            return jpeg_bytes(width, height, _rgb(match.group(4))), "image/jpeg"
        return png_bytes(width, height, _rgb(match.group(4)), _rgb(match.group(5))), "image/png"
    if _VIDEO_NAME.match(name):
        return mp4_bytes(), "video/mp4"
    return None


_TOS_ERRORS = {
    "NoSuchKey": (404, "The specified key does not exist."),
    "SignatureDoesNotMatch": (403, "The request signature we calculated does not match the signature you provided."),
    "Expired": (403, "Request has expired."),
}


def fault_response(injection: Injection) -> web.Response:
    """An injected failure of a media link, as an object store answers it (TOS's XML-free JSON error)."""
    error = {
        "Code": "ServiceUnavailable",
        "Message": "Please reduce your request rate.",
        "RequestId": secrets.token_hex(12),
    }
    headers = {"Retry-After": str(int(injection.retry_after_s))} if injection.retry_after_s else {}
    return web.Response(
        status=injection.status, text=json.dumps(error), content_type="application/json", headers=headers
    )


def serve(request: web.Request, signer: MediaSigner) -> web.Response:
    """``GET /files/{name}?X-Expires&X-Signature``: the file, 404 for a name never issued, 403 once expired."""
    name = request.match_info["name"]
    problem = signer.check(name, request.query.get("X-Expires"), request.query.get("X-Signature"))
    found = bytes_for_name(name) if problem is None else None
    if problem is not None or found is None:
        problem = problem or "NoSuchKey"
        status, message = _TOS_ERRORS[problem]
        code = "AccessDenied" if problem == "Expired" else problem
        error = {"Code": code, "Message": message, "RequestId": secrets.token_hex(12), "Key": name}
        return web.Response(status=status, text=json.dumps(error), content_type="application/json")
    data, content_type = found
    return web.Response(body=data, content_type=content_type)
