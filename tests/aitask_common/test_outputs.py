"""Output links (signing, checking) and a provider's download of a result link (aitask_common.outputs,
aitask_common.output_fetch): pure logic, and a real HTTP server on loopback for the download."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from aiohttp import web

from aitask.v1 import task_service_pb2 as pb
from aitask_common.output_fetch import fetch_output
from aitask_common.output_settings import OutputSettings
from aitask_common.outputs import OutputLinks, sniff_content_type
from aitask_common.provider import UpstreamError
from aitask_common.settings import Environment

NOW = 1_800_000_000.0


def links(**settings: object) -> OutputLinks:
    return OutputLinks(OutputSettings(**({"output_url_secret": "test-secret"} | settings)))  # type: ignore[arg-type]


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def test_a_link_is_valid_until_it_expires_and_only_as_signed() -> None:
    signer = links(output_url_ttl_seconds=60, output_public_url="https://api.example.com/")
    url = signer.url("TASK1", now=NOW)
    assert url.startswith("https://api.example.com/api/v1/ai/task/TASK1/output?expires=")
    query = query_of(url)
    assert signer.valid("TASK1", query["expires"], query["signature"], now=NOW + 59)
    assert not signer.valid("TASK1", query["expires"], query["signature"], now=NOW + 61)
    assert not signer.valid("TASK2", query["expires"], query["signature"], now=NOW)
    assert not signer.valid("TASK1", str(int(query["expires"]) + 1), query["signature"], now=NOW)
    assert not signer.valid("TASK1", query["expires"], query["signature"][:-1] + "0", now=NOW)
    assert not signer.valid("TASK1", "-1", query["signature"], now=NOW)
    assert not links(output_url_secret="another").valid("TASK1", query["expires"], query["signature"], now=NOW)


def test_sign_points_the_right_field_at_a_stored_output_only() -> None:
    signer = links()
    video = pb.Task(task_id="V", type="video", video_url="https://vendor/v.mp4")
    video.output.size = 10
    assert "/api/v1/ai/task/V/output?" in signer.sign(video).video_url
    image = pb.Task(task_id="I", type="image", image_url="https://vendor/i.jpeg")
    assert signer.sign(image).image_url == "https://vendor/i.jpeg"  # nothing stored: the vendor's link stays


def test_production_requires_a_secret() -> None:
    with pytest.raises(SystemExit, match="OUTPUT_URL_SECRET"):
        OutputLinks(OutputSettings(environment=Environment.PRODUCTION))


def test_media_types_are_told_by_their_magic_numbers() -> None:
    assert sniff_content_type(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert sniff_content_type(b"\xff\xd8\xff\xe0....") == "image/jpeg"
    assert sniff_content_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_content_type(b"hello") == "application/octet-stream"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _fetch(routes: dict[str, Handler], path: str, max_bytes: int = 1 << 20) -> bytes:
    runner, base = await _serve(routes)
    try:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            chunks: AsyncIterator[object] = fetch_output(client, base + path, {}, max_bytes)
            return b"".join([chunk.data async for chunk in chunks])  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


async def _bytes(_: web.Request) -> web.Response:
    return web.Response(body=b"x" * 5000, content_type="image/png")


def test_the_vendors_link_is_streamed() -> None:
    assert asyncio.run(_fetch({"/out": _bytes}, "/out")) == b"x" * 5000


def test_a_redirect_to_a_private_address_is_not_followed() -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{request.url.port}/out")

    with pytest.raises(UpstreamError) as refused:
        asyncio.run(_fetch({"/start": redirect, "/out": _bytes}, "/start"))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "loopback" in refused.value.message and "not followed" in refused.value.message


def test_an_output_over_the_limit_is_refused_by_its_length_or_its_bytes() -> None:
    with pytest.raises(UpstreamError) as declared:
        asyncio.run(_fetch({"/out": _bytes}, "/out", max_bytes=4000))
    assert declared.value.code == grpc.StatusCode.OUT_OF_RANGE

    async def unannounced(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(5):
            await response.write(b"y" * 1000)
        await response.write_eof()
        return response

    with pytest.raises(UpstreamError) as counted:
        asyncio.run(_fetch({"/out": unannounced}, "/out", max_bytes=4000))
    assert counted.value.code == grpc.StatusCode.OUT_OF_RANGE


def test_a_link_that_is_gone_is_final_and_a_failing_one_retryable() -> None:
    async def gone(_: web.Request) -> web.Response:
        return web.Response(status=404)

    async def failing(_: web.Request) -> web.Response:
        return web.Response(status=503)

    with pytest.raises(UpstreamError) as final:
        asyncio.run(_fetch({"/out": gone}, "/out"))
    assert final.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(UpstreamError) as retryable:
        asyncio.run(_fetch({"/out": failing}, "/out"))
    assert retryable.value.code == grpc.StatusCode.UNAVAILABLE
