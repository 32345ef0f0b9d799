"""Server assembly, settings, media generation, the CLI entry point and concurrency."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import httpx
import pytest
from pydantic import ValidationError
from volcenginesdkarkruntime import Ark

from tests.upstream_simulator.helpers import decode_jpeg, decode_png, is_mp4, png_palette
from upstream_simulator import SimulatorSettings, SimulatorThread, media

REPO = Path(__file__).resolve().parents[2]
ARK_HEADERS = {"Authorization": "Bearer sim-ark-key"}
SEEDANCE = "doubao-seedance-1-0-pro-250528"


def test_png_generator_makes_valid_images_of_any_size() -> None:
    for width, height in [(1, 1), (7, 3), (512, 512), (1248, 832), (2048, 2048)]:
        data = media.png_bytes(width, height, (1, 2, 3), (4, 5, 6))
        assert decode_png(data) == (width, height)
        assert png_palette(data) == bytes([1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError):
        media.png_bytes(0, 10, (0, 0, 0), (0, 0, 0))


def test_media_names_round_trip() -> None:
    signer = media.MediaSigner(b"secret")
    name = signer.image_name(640, 480, "prompt|1")
    body, content_type = media.bytes_for_name(name)
    assert content_type == "image/png" and decode_png(body) == (640, 480)
    assert png_palette(body)[:3] == bytes(media.colours_for("prompt|1")[0])
    body, content_type = media.bytes_for_name(signer.image_name(64, 48, "prompt|1", "jpeg"))
    assert content_type == "image/jpeg" and decode_jpeg(body) == (64, 48)
    video, content_type = media.bytes_for_name(signer.video_name())
    assert content_type == "video/mp4" and is_mp4(video) and video[8:12] == b"isom"
    assert media.bytes_for_name("img-99999x1-000000-000000-0000000000000000-00000000000000000000.png") is None
    assert media.bytes_for_name("../etc/passwd") is None
    # Only names this signer issued are served; a name from another signer (or made up) is not.
    assert signer.issued(name) and not media.MediaSigner(b"other").issued(name)
    assert not signer.issued(name.replace("img-640", "img-641"))


def test_unknown_file_is_404() -> None:
    with SimulatorThread(SimulatorSettings(port=0)) as sim:
        response = httpx.get(sim.url + "/files/nope.png", trust_env=False)
        assert response.status_code == 404


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATOR_PORT", "9555")
    monkeypatch.setenv("SIMULATOR_VIDEO_SECONDS", "1.5")
    monkeypatch.setenv("SIMULATOR_FAULTS", json.dumps({"*": {"latency_s": 0.1}, "ark.images": {"error_rate": 0.5}}))
    settings = SimulatorSettings()
    assert (settings.port, settings.video_seconds, settings.ark_api_key) == (9555, 1.5, "sim-ark-key")
    assert settings.public_base(9555) == "http://127.0.0.1:9555"
    assert settings.faults["ark.images"].error_rate == 0.5
    monkeypatch.setenv("SIMULATOR_FAULTS", json.dumps({"ark.nope": {"latency_s": 1}}))
    with pytest.raises(ValidationError):
        SimulatorSettings()


def test_startup_faults_and_public_url() -> None:
    settings = SimulatorSettings(
        port=0,
        public_url="http://media.example:8080/",
        faults={"*": {"latency_s": 0.05}, "ark.chat": {"rate_limit_rate": 1.0}},
    )
    with SimulatorThread(settings) as sim:
        faults = httpx.get(sim.url + "/_sim/faults", trust_env=False).json()
        assert faults["ark.chat"]["rate_limit_rate"] == 1.0 and faults["ark.chat"]["latency_s"] == 0.05
        assert faults["openai.images"]["latency_s"] == 0.05
        ark = Ark(api_key="sim-ark-key", base_url=sim.url + "/api/v3", max_retries=0)
        url = ark.images.generate(model="doubao-seedream-3-0-t2i-250415", prompt="a cat").data[0].url
        assert url.startswith("http://media.example:8080/files/img-1024x1024-")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_python_dash_m_entry_point() -> None:
    port = _free_port()
    env = {
        **os.environ,
        "SIMULATOR_PORT": str(port),
        "SIMULATOR_FAULTS": '{"openai.chat": {"latency_s": 0.2}}',
        "NO_PROXY": "127.0.0.1,localhost",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "upstream_simulator"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}" in line
        faults = httpx.get(f"http://127.0.0.1:{port}/_sim/faults", trust_env=False, timeout=5).json()
        assert faults["openai.chat"]["latency_s"] == 0.2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_hundreds_of_concurrent_requests_and_thousands_of_jobs() -> None:
    """The server runs on its own thread; an aiohttp client fires concurrent bursts at it."""
    settings = SimulatorSettings(port=0, video_seconds=0.5, faults={"*": {"latency_s": 0.2}})
    with SimulatorThread(settings) as sim:
        ctx = sim.context

        async def scenario() -> None:
            connector = aiohttp.TCPConnector(limit=1000)
            async with aiohttp.ClientSession(sim.url, headers=ARK_HEADERS, connector=connector) as session:

                async def post(path: str, body: dict[str, object]) -> int:
                    async with session.post(path, json=body) as response:
                        await response.read()
                        return response.status

                image = {"model": "doubao-seedream-3-0-t2i-250415", "prompt": "p", "response_format": "b64_json"}
                chat = {"model": "doubao-1-5-pro-32k-250115", "messages": [{"role": "user", "content": "hi"}]}
                started = time.monotonic()
                statuses = await asyncio.gather(
                    *[post("/api/v3/images/generations", image) for _ in range(200)],
                    *[post("/api/v3/chat/completions", chat) for _ in range(200)],
                )
                elapsed = time.monotonic() - started
                assert statuses == [200] * 400
                # 400 requests with 0.2 s latency each overlap instead of queueing (80 s serially).
                assert elapsed < 3, elapsed

                await session.delete("/_sim/faults")
                limit = asyncio.Semaphore(200)
                task = {"model": SEEDANCE, "content": [{"type": "text", "text": "clip"}]}

                async def submit() -> int:
                    async with limit:
                        return await post("/api/v3/contents/generations/tasks", task)

                assert set(await asyncio.gather(*[submit() for _ in range(5000)])) == {200}
                await asyncio.sleep(0.6)
                params = {"page_size": "1", "filter.status": "succeeded"}
                async with session.get("/api/v3/contents/generations/tasks", params=params) as response:
                    assert (await response.json())["total"] == 5000

        threads_before = set(threading.enumerate())
        asyncio.run(scenario())
        assert len(ctx.jobs) == 5000
        # Job state is computed from timestamps: no thread or task per job on the server loop. (Threads of
        # earlier tests, e.g. a collected MongoClient's monitors, may end meanwhile: only new ones count.)
        assert set(threading.enumerate()) - threads_before == set()
        assert ctx.stats.snapshot()["ark.tasks.create"]["ok"] == 5000


def test_help_prints_help_instead_of_serving() -> None:
    port = _free_port()
    env = {**os.environ, "SIMULATOR_PORT": str(port)}
    result = subprocess.run(
        [sys.executable, "-m", "upstream_simulator", "--help"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m upstream_simulator")
    for fragment in ("SIMULATOR_PORT", "SIMULATOR_FAULTS", "SIMULATOR_RETIRED_GRACE", "transport", "/_sim/faults"):
        assert fragment in result.stdout
    with socket.socket() as sock:  # nothing was left listening on the port
        sock.bind(("127.0.0.1", port))
    unknown = subprocess.run([sys.executable, "-m", "upstream_simulator", "--port", "1"], cwd=REPO,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert unknown.returncode == 2 and "unrecognized arguments" in unknown.stderr
