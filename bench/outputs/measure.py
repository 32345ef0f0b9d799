"""Measure the output store on a local stack (GridFS on FerretDB/PostgreSQL): memory while storing and serving a large
video, and whether a Range read stays fast with many stored outputs.

    .venv/bin/python -m bench.outputs.measure [--video-mib 100] [--downloads 100] [--outputs 10000]
                                              [--give-up-seconds 300]

1. Stores a video of --video-mib MiB through GridFSOutputStore.put from a generator, and reports this process's
   peak RSS growth (VmHWM) while doing it.
2. Serves it to --downloads concurrent clients through Envoy by a signed link, and reports the peak RSS (VmHWM) of
   each task-service process before and after, the wall time, the bytes served and how many downloads completed
   (each is closed after --give-up-seconds).
3. Stores --outputs small outputs beside it and times Range reads into the video (chunk reads by `_id`).
Between 1 and 2, it times Range reads of the same video stored by pymongo's GridFS (ObjectId chunk ids, read by
files_id and n, as every chunk was before chunk ids), interleaved with reads of ours.

Writes the numbers as JSON to bench/outputs/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from gridfs import GridFSBucket

from aitask_common.output_settings import OutputSettings
from aitask_common.outputs import CHUNK_BYTES, GRIDFS_BUCKET, GridFSOutputStore, OutputLinks
from aitask_common.tasks import utcnow
from devstack.processes import Ports
from devstack.stack import LocalStack

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def video_chunks(mib: int) -> Any:
    block = os.urandom(MIB)
    for index in range(mib):
        yield block[:-8] + index.to_bytes(8, "big")


def store_video(stack: LocalStack, store: GridFSOutputStore, task_id: str, mib: int) -> dict[str, Any]:
    before = peak_rss_mib(os.getpid())
    started = time.perf_counter()
    stored = store.put(task_id, video_chunks(mib), "video/mp4", 1 << 40)
    seconds = time.perf_counter() - started
    now = utcnow()
    stack.tasks().insert_one(
        {
            "_id": task_id,
            "type": "video",
            "status": "completed",
            "user_id": "bench-outputs",
            "provider": "bench",
            "model": "bench",
            "prompt": "",
            "parameters": {},
            "attempts": 1,
            "created": now,
            "updated": now,
            "output": stored.to_document(),
        }
    )
    return {
        "mib": mib,
        "seconds": round(seconds, 2),
        "mib_per_second": round(mib / seconds, 1),
        "peak_rss_growth_mib": round(peak_rss_mib(os.getpid()) - before, 1),
    }


async def download_all(url: str, count: int, size: int, give_up_seconds: float) -> dict[str, Any]:
    """`count` concurrent downloads of `url`, each closed after `give_up_seconds` if not done by then (peak RSS is
    reached once every stream is open; a whole 10 GiB would take a slow store hours)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600), trust_env=False) as client:
        deadline = time.perf_counter() + give_up_seconds

        async def one() -> int:
            received = 0
            async with client.stream("GET", url) as response:
                assert response.status_code == 200, response.status_code
                async for data in response.aiter_raw(1 << 20):
                    received += len(data)
                    if time.perf_counter() > deadline:
                        break
            return received

        started = time.perf_counter()
        sizes = await asyncio.gather(*(one() for _ in range(count)))
        seconds = time.perf_counter() - started
    return {
        "downloads": count,
        "complete": sum(received == size for received in sizes),
        "seconds": round(seconds, 1),
        "gib_served": round(sum(sizes) / 1024**3, 2),
        "mib_per_second": round(sum(sizes) / MIB / seconds, 1),
    }


def range_reads(stack: LocalStack, link: str, size: int, reps: int = 30) -> dict[str, Any]:
    timings = []
    with httpx.Client(trust_env=False, timeout=60) as client:
        for rep in range(reps):
            start = (rep * 7919 * 4096) % (size - 65536)
            begun = time.perf_counter()
            response = client.get(link, headers={"Range": f"bytes={start}-{start + 65535}"})
            timings.append((time.perf_counter() - begun) * 1000)
            assert response.status_code == 206 and len(response.content) == 65536
    return {"reps": reps, "median_ms": round(statistics.median(timings), 1), "max_ms": round(max(timings), 1)}


def direct_range_reads(store: GridFSOutputStore, task_id: str, size: int, reps: int = 30) -> dict[str, Any]:
    """64 KiB reads straight from the store (no HTTP), as a Range request makes them."""
    timings = []
    for rep in range(reps):
        start = (rep * 7919 * 4096) % (size - 65536)
        begun = time.perf_counter()
        assert len(b"".join(store.read(task_id, start, start + 65535))) == 65536
        timings.append((time.perf_counter() - begun) * 1000)
    return {"reps": reps, "median_ms": round(statistics.median(timings), 1), "max_ms": round(max(timings), 1)}


def chunk_lookups(stack: LocalStack, store: GridFSOutputStore, task_id: str, mib: int) -> dict[str, Any]:
    """Range reads of our copy (chunks found by `_id`) beside the same bytes as pymongo's GridFS writes them
    (ObjectId chunk ids, found by files_id and n: how every chunk was read before chunk ids), interleaved."""
    legacy = f"{task_id}-LEGACY"
    bucket = GridFSBucket(stack.mongo()["aitask"], GRIDFS_BUCKET, chunk_size_bytes=CHUNK_BYTES)
    bucket.upload_from_stream_with_id(legacy, legacy, io.BytesIO(b"".join(video_chunks(mib))))
    size = mib * MIB
    try:
        rounds = [(direct_range_reads(store, task_id, size, 10), direct_range_reads(store, legacy, size, 10))]
        rounds += [(direct_range_reads(store, task_id, size, 10), direct_range_reads(store, legacy, size, 10))]
    finally:
        store.delete(legacy)
    by_id = statistics.median(ours["median_ms"] for ours, _ in rounds)
    by_files_id_and_n = statistics.median(theirs["median_ms"] for _, theirs in rounds)
    return {"by_id_median_ms": by_id, "by_files_id_and_n_median_ms": by_files_id_and_n, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video-mib", type=int, default=100)
    parser.add_argument("--downloads", type=int, default=100)
    parser.add_argument("--outputs", type=int, default=10000)
    parser.add_argument("--give-up-seconds", type=float, default=300, help="closes each download after this long")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    stack = LocalStack(Ports.free(), Path(tempfile.mkdtemp(prefix="aitask-bench-outputs-")))
    try:
        stack.start_all()
        store = GridFSOutputStore(stack.mongo(), "aitask")
        task_id = "BENCHOUTPUTVIDEO0000000000"
        results["store"] = store_video(stack, store, task_id, args.video_mib)
        print("stored", results["store"], flush=True)
        link = OutputLinks(OutputSettings(output_public_url=f"http://127.0.0.1:{stack.ports.envoy}")).url(task_id)
        size = args.video_mib * MIB
        results["range_with_1_output"] = range_reads(stack, link, size)
        results["chunk_lookups"] = chunk_lookups(stack, store, task_id, args.video_mib)
        print("chunk lookups", results["chunk_lookups"], flush=True)
        pids = {name: stack.running[name].pid for name in ("task_service", "task_service_2")}
        before = {name: round(peak_rss_mib(pid), 1) for name, pid in pids.items()}
        served = asyncio.run(download_all(link, args.downloads, size, args.give_up_seconds))
        after = {name: round(peak_rss_mib(pid), 1) for name, pid in pids.items()}
        results["serve"] = served | {"task_service_peak_rss_mib_before": before, "after": after}
        print("served", results["serve"], flush=True)
        started = time.perf_counter()
        for index in range(args.outputs):
            store.put(f"BENCHSMALL{index:016d}", [os.urandom(2048)], "image/png", 1 << 20)
        results["small_outputs"] = {"count": args.outputs, "store_seconds": round(time.perf_counter() - started, 1)}
        results[f"range_with_{args.outputs}_outputs"] = range_reads(stack, link, size)
        print("range", results[f"range_with_{args.outputs}_outputs"], flush=True)
    finally:
        stack.stop_all()
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
