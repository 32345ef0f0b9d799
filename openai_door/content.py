"""Where a video's bytes come from: the one place to change when outputs are hosted in aitask's own store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from aitask.v1 import task_service_pb2 as pb
from openai_door.errors import OpenAIError

CHUNK_BYTES = 64 * 1024


@dataclass
class VideoContent:
    """An open video: its type, its length when known, and its bytes as they arrive."""

    content_type: str
    length: int | None
    chunks: AsyncIterator[bytes]


async def open_video(session: aiohttp.ClientSession, task: pb.Task) -> VideoContent:
    """The video of a completed task, fetched from its `video_url` (today the vendor's link) and streamed
    through. The outputs store will give `video_url` a gateway address; this stays the only reader of it."""
    response = await session.get(task.video_url, allow_redirects=False)
    if response.status != 200:
        response.release()
        raise OpenAIError(
            502,
            f"the video of task {task.task_id} could not be fetched (HTTP {response.status})",
            error_type="server_error",
            code="content_unavailable",
        )

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        finally:
            response.release()

    return VideoContent(response.content_type or "video/mp4", response.content_length, chunks())
