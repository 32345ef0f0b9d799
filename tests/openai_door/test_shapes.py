"""The door's pure translations: OpenAI request fields into aitask's, aitask's errors into OpenAI's."""

from __future__ import annotations

import grpc
import pytest

from aitask.v1 import task_service_pb2 as pb
from openai_door.errors import OpenAIError, from_rpc_error
from openai_door.shapes import aspect_ratio_of, prompt_from_messages, video_object


@pytest.mark.parametrize(
    ("size", "ratio"),
    [("1280x720", "16:9"), ("720x1280", "9:16"), ("1024x1024", "1:1"), ("1792x1024", "7:4"), ("4:3", "4:3"), ("", "")],
)
def test_a_video_size_is_its_aspect_ratio(size: str, ratio: str) -> None:
    assert aspect_ratio_of(size) == ratio


@pytest.mark.parametrize("size", ["big", "0x720", "1280x", "x"])
def test_a_size_that_is_no_size_is_a_400_naming_it(size: str) -> None:
    with pytest.raises(OpenAIError) as error:
        aspect_ratio_of(size)
    assert error.value.status == 400 and error.value.param == "size"


def test_messages_become_one_prompt() -> None:
    assert prompt_from_messages([{"role": "user", "content": "hi"}]) == "hi"
    assert (
        prompt_from_messages(
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        )
        == "ab"
    )
    assert (
        prompt_from_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        == "system: Be brief.\n\nuser: hi"
    )


@pytest.mark.parametrize(
    "messages", [[], "hi", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], [3]]
)
def test_messages_that_are_not_text_are_a_400(messages: object) -> None:
    with pytest.raises(OpenAIError) as error:
        prompt_from_messages(messages)
    assert error.value.status == 400


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNAVAILABLE, 503),
    ],
)
def test_task_service_codes_map_to_the_statuses_the_sdks_know(code: grpc.StatusCode, status: int) -> None:
    assert from_rpc_error(_RpcError(code, "something")).status == status


def test_a_400_names_its_field_and_a_429_carries_retry_after() -> None:
    bad = from_rpc_error(_RpcError(grpc.StatusCode.INVALID_ARGUMENT, "size: '9x9' is not allowed"))
    assert bad.param == "size" and bad.body()["error"]["message"] == "size: '9x9' is not allowed"
    limited = from_rpc_error(_RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", (("retry-after", "7"),)))
    assert limited.headers == {"retry-after": "7"} and limited.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("status", "video_status", "error_code"),
    [
        ("pending", "queued", None),
        ("processing", "in_progress", None),
        ("completed", "completed", None),
        ("failed", "failed", "generation_failed"),
        ("cancelled", "failed", "cancelled"),
    ],
)
def test_a_video_task_is_an_openai_video(status: str, video_status: str, error_code: str | None) -> None:
    task = pb.Task(task_id="01ARZ3NDEKTSV4RRFFQ69G5FAV", type="video", status=status, model="m", prompt="p")
    task.parameters.aspect_ratio = "9:16"
    video = video_object(task)
    assert video["status"] == video_status and video["size"] == "720x1280" and video["object"] == "video"
    assert (video["error"] or {}).get("code") == error_code
    assert video["progress"] == (100 if status == "completed" else 0)
