"""aitask's objects in OpenAI's response shapes, and OpenAI's request fields in aitask's."""

from __future__ import annotations

import math
from typing import Any

from aitask.v1 import task_service_pb2 as pb
from aitask_common.tasks import TaskStatus
from openai_door.errors import OpenAIError, bad_request

# aitask status → OpenAI video status.
VIDEO_STATUS = {
    TaskStatus.PENDING: "queued",
    TaskStatus.PROCESSING: "in_progress",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "failed",
}
# A video's `size` as OpenAI spells it, for the aspect ratios the catalogue uses.
SIZE_BY_ASPECT_RATIO = {
    "16:9": "1280x720",
    "9:16": "720x1280",
    "1:1": "1024x1024",
    "4:3": "1024x768",
    "3:4": "768x1024",
    "21:9": "1680x720",
}


def prompt_from_messages(messages: Any) -> str:
    """One prompt from OpenAI chat messages: the text of a lone message, else each message on its own line(s)
    after its role (a task carries one prompt; the providers send it as the user's message)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: must be a non-empty array", "messages")
    parts = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}]: must be an object", f"messages[{index}]")
        text = _message_text(message.get("content"), index)
        parts.append((str(message.get("role", "user")), text))
    if len(parts) == 1:
        return parts[0][1]
    return "\n\n".join(f"{role}: {text}" for role, text in parts)


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request(
                    f"messages[{index}].content: only text parts are supported", f"messages[{index}].content"
                )
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise bad_request(f"messages[{index}].content: must be a string or an array of text parts", "messages")


def aspect_ratio_of(size: str) -> str:
    """An OpenAI video `size` ("1280x720") as an aspect ratio ("16:9"); a ratio is taken as it is."""
    if not size or ":" in size:
        return size
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) == 0 or int(height) == 0:
        raise bad_request(f"size: {size!r} is not WIDTHxHEIGHT", "size")
    divisor = math.gcd(int(width), int(height))
    return f"{int(width) // divisor}:{int(height) // divisor}"


def image_response(task: pb.Task) -> dict[str, Any]:
    """`images.generate`'s answer for a completed image task."""
    item: dict[str, Any] = {"b64_json": task.image_base64} if task.image_base64 else {"url": task.image_url}
    if task.revised_prompt:
        item["revised_prompt"] = task.revised_prompt
    return {"created": task.created.seconds, "data": [item]}


def chat_completion(task: pb.Task, model: str) -> dict[str, Any]:
    """`chat.completions.create`'s answer for a completed text task."""
    return {
        "id": f"chatcmpl-{task.task_id}",
        "object": "chat.completion",
        "created": task.created.seconds,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": task.text_result, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(task),
        "system_fingerprint": None,
    }


def usage(task: pb.Task) -> dict[str, int]:
    """A text task's token counts."""
    return {
        "prompt_tokens": task.usage.prompt_tokens,
        "completion_tokens": task.usage.completion_tokens,
        "total_tokens": task.usage.total_tokens,
    }


def chat_chunks(task: pb.Task, model: str, include_usage: bool) -> list[dict[str, Any]]:
    """The `chat.completion.chunk`s of a streamed answer: the role, the text, the end (and the usage)."""
    base = {"id": f"chatcmpl-{task.task_id}", "object": "chat.completion.chunk", "created": task.created.seconds}
    base |= {"model": model, "system_fingerprint": None}

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return base | {"choices": [choice]}

    chunks = [
        chunk({"role": "assistant", "content": ""}, None),
        chunk({"content": task.text_result}, None),
        chunk({}, "stop"),
    ]
    if include_usage:
        chunks.append(base | {"choices": [], "usage": usage(task)})
    return chunks


def video_object(task: pb.Task) -> dict[str, Any]:
    """A video task as OpenAI's `video` object."""
    status = TaskStatus(task.status)
    final = status.is_final
    error = None
    if status is TaskStatus.FAILED:
        error = {"code": "generation_failed", "message": task.error_message or "the video failed"}
    elif status is TaskStatus.CANCELLED:
        error = {"code": "cancelled", "message": f"the video was cancelled ({task.cancel_reason or 'user'})"}
    return {
        "id": task.task_id,
        "object": "video",
        "model": task.model,
        "status": VIDEO_STATUS[status],
        "progress": 100 if status is TaskStatus.COMPLETED else (task.progress if task.HasField("progress") else 0),
        "created_at": task.created.seconds,
        "completed_at": task.updated.seconds if final else None,
        "expires_at": None,
        "error": error,
        "prompt": task.prompt,
        "remixed_from_video_id": None,
        # The vendors' clip length is not recorded on the task.
        "seconds": "",
        "size": SIZE_BY_ASPECT_RATIO.get(task.parameters.aspect_ratio, task.parameters.aspect_ratio),
    }


def failed_task_error(task: pb.Task) -> OpenAIError:
    """The answer for an image or text task that ended without a result. The SDK should not retry it: a retry
    reaches the same task (same idempotency key) and gets the same answer."""
    status = TaskStatus(task.status)
    if status is TaskStatus.CANCELLED:
        return OpenAIError(
            409,
            f"task {task.task_id} was cancelled ({task.cancel_reason or 'user'})",
            code="task_cancelled",
            extra={"task_id": task.task_id},
            headers={"x-should-retry": "false"},
        )
    return OpenAIError(
        500,
        f"task {task.task_id} failed: {task.error_message or 'no reason given'}",
        error_type="server_error",
        code="task_failed",
        extra={"task_id": task.task_id},
        headers={"x-should-retry": "false"},
    )
