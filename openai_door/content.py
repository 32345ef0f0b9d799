"""Where a video's bytes come from: aitask's own copy, read from the task services' output servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

from aitask.v1 import task_service_pb2 as pb
from openai_door.errors import OpenAIError

CHUNK_BYTES = 64 * 1024


@dataclass
class VideoContent:
    """An open video: its type, its length when known, and its bytes as they arrive."""

    content_type: str
    length: int | None
    chunks: AsyncIterator[bytes]


async def open_video(session: aiohttp.ClientSession, outputs_url: str, task: pb.Task) -> VideoContent:
    """The video of a completed task, streamed through: its `video_url` is the signed link to the stored copy
    (absolute when OUTPUT_PUBLIC_URL is set), whose path and query the output server at `outputs_url` answers."""
    link = URL(task.video_url)
    response = await session.get(URL(outputs_url).join(URL.build(path=link.path, query=link.query)))
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
