"""The SDK-error-to-gRPC mapping and the chat call OpenAI's and Ark's providers share (aitask_common.provider).

The exceptions are the SDKs' own classes, built as the SDKs build them (with an HTTP response); the last
tests go through the real SDKs against the in-process simulator (tests/conftest.py), which fails on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any, TypeVar

import grpc
import httpx
import httpx2
import openai
import pytest
from openai import AsyncOpenAI
from volcenginesdkarkruntime._exceptions import (
    ArkAPIConnectionError,
    ArkAPIStatusError,
    ArkAPITimeoutError,
    ArkBadRequestError,
    ArkRateLimitError,
)

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.provider import OpenAIShapedSdk, UpstreamError
from provider_openai.servicer import OPENAI
from provider_volcengine.ark import ARK, ArkClient
from tests.upstream_simulator.helpers import ARK_KEY, OPENAI_KEY
from upstream_simulator import SimulatorThread

T = TypeVar("T")

OPENAI_URL = "https://api.openai.test/v1/chat/completions"
ARK_URL = "https://ark.test/api/v3/chat/completions"


def openai_status_error(
    status: int, body: object, headers: dict[str, str] | None = None, kind: type[openai.APIStatusError] | None = None
) -> openai.APIStatusError:
    """What the OpenAI SDK raises for an HTTP error answer (its message as the SDK words it)."""
    response = httpx2.Response(status, headers=headers, request=httpx2.Request("POST", OPENAI_URL))
    return (kind or openai.APIStatusError)(f"Error code: {status}", response=response, body=body)


def ark_status_error(
    status: int, body: object, headers: dict[str, str] | None = None, kind: type[ArkAPIStatusError] | None = None
) -> ArkAPIStatusError:
    """What the Ark SDK raises for an HTTP error answer."""
    response = httpx.Response(status, headers=headers, request=httpx.Request("POST", ARK_URL))
    return (kind or ArkAPIStatusError)(f"Error code: {status}", response=response, body=body, request_id="req-7")


def mapped(sdk: OpenAIShapedSdk, error: Exception) -> UpstreamError:
    upstream = sdk.upstream_error(error)
    assert upstream is not None
    return upstream


def test_the_vendors_status_error_keeps_its_message_and_code_under_the_vendors_name() -> None:
    openai_error = openai_status_error(
        400,
        {"message": "Your request was rejected.", "type": "invalid_request_error", "code": "content_policy_violation"},
        kind=openai.BadRequestError,
    )
    ark_error = ark_status_error(
        400,
        {"message": "The prompt is sensitive.", "code": "InputTextSensitiveContentDetected"},
        kind=ArkBadRequestError,
    )
    assert mapped(OPENAI, openai_error) == UpstreamError(
        grpc.StatusCode.INVALID_ARGUMENT, "openai 400 content_policy_violation: Your request was rejected."
    )
    assert mapped(ARK, ark_error) == UpstreamError(
        grpc.StatusCode.INVALID_ARGUMENT, "ark 400 InputTextSensitiveContentDetected: The prompt is sensitive."
    )


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.PERMISSION_DENIED),
        (404, grpc.StatusCode.INVALID_ARGUMENT),
        (408, grpc.StatusCode.UNAVAILABLE),
        (409, grpc.StatusCode.UNAVAILABLE),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_http_statuses_map_to_the_codes_the_dispatcher_acts_on(status: int, code: grpc.StatusCode) -> None:
    body = {"message": "m", "code": "c"}
    assert mapped(OPENAI, openai_status_error(status, body)).code is code
    assert mapped(ARK, ark_status_error(status, body)).code is code


def test_retry_after_comes_from_the_upstreams_headers() -> None:
    body = {"message": "slow down", "code": "rate_limit_exceeded"}
    in_ms = openai_status_error(429, body, {"retry-after-ms": "400", "retry-after": "1"}, kind=openai.RateLimitError)
    in_seconds = ark_status_error(429, body, {"retry-after": "3"}, kind=ArkRateLimitError)
    as_a_date = ark_status_error(429, body, {"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"})
    assert mapped(OPENAI, in_ms).retry_after_seconds == pytest.approx(0.4)
    assert mapped(ARK, in_seconds).retry_after_seconds == 3.0
    assert mapped(ARK, as_a_date).retry_after_seconds is None
    assert mapped(OPENAI, openai_status_error(500, body)).retry_after_seconds is None


def test_without_a_message_in_the_body_the_sdks_own_message_is_used() -> None:
    assert mapped(OPENAI, openai_status_error(502, "<html>bad gateway</html>")).message == "openai 502: Error code: 502"
    assert mapped(ARK, ark_status_error(502, None)).message == "ark 502: Error code: 502"
    assert mapped(ARK, ark_status_error(500, {"code": "InternalServiceError"})).message == (
        "ark 500 InternalServiceError: Error code: 500"
    )


def test_timeouts_and_failed_connections() -> None:
    openai_request = httpx2.Request("POST", OPENAI_URL)
    ark_request = httpx.Request("POST", ARK_URL)
    assert mapped(OPENAI, openai.APITimeoutError(request=openai_request)) == UpstreamError(
        grpc.StatusCode.DEADLINE_EXCEEDED, "openai: request timed out"
    )
    assert mapped(ARK, ArkAPITimeoutError(request=ark_request, request_id="r")) == UpstreamError(
        grpc.StatusCode.DEADLINE_EXCEEDED, "ark: request timed out"
    )
    refused = mapped(OPENAI, openai.APIConnectionError(request=openai_request))
    assert (refused.code, refused.message) == (
        grpc.StatusCode.UNAVAILABLE,
        "openai: connection failed: Connection error.",
    )
    refused = mapped(ARK, ArkAPIConnectionError(request=ark_request, request_id="r"))
    assert refused.code is grpc.StatusCode.UNAVAILABLE
    assert refused.message.startswith("ark: connection failed: Connection error.")


def test_one_sdks_exceptions_are_not_the_others() -> None:
    assert ARK.upstream_error(openai_status_error(500, None)) is None
    assert OPENAI.upstream_error(ArkAPITimeoutError(request=httpx.Request("GET", ARK_URL), request_id="r")) is None
    assert OPENAI.upstream_error(ValueError("not an SDK error")) is None


async def _raise(error: Exception) -> None:
    raise error


async def _value(value: T) -> T:
    return value


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def test_call_turns_sdk_failures_into_upstream_errors_and_lets_the_rest_through() -> None:
    error = openai_status_error(429, {"message": "slow down", "code": "rate_limit_exceeded"}, {"retry-after": "2"})
    with pytest.raises(UpstreamError) as raised:
        run(OPENAI.call(_raise(error)))
    assert raised.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.retry_after_seconds == 2.0
    assert raised.value.__cause__ is error
    with pytest.raises(KeyError):
        run(ARK.call(_raise(KeyError("a bug, not an upstream failure"))))
    assert run(ARK.call(_value(42))) == 42


class RecordingCreate:
    """Stands in for `client.chat.completions.create`: records the options, answers a chat completion."""

    def __init__(self, usage: Any) -> None:
        self.options: dict[str, Any] = {}
        self.usage = usage

    async def __call__(self, **options: Any) -> Any:
        self.options = options
        message = SimpleNamespace(content="hello there")
        return SimpleNamespace(choices=[SimpleNamespace(message=message)], usage=self.usage)


def test_chat_sends_the_prompt_as_one_user_message_and_options_only_when_set() -> None:
    create = RecordingCreate(SimpleNamespace(prompt_tokens=3, completion_tokens=2, total_tokens=5))
    response = run(OPENAI.chat(create, pb.GenerationInput(model="gpt-5.5", prompt="hi")))
    assert create.options == {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
    assert response == pb.GenerateResponse(
        text_result="hello there", prompt_tokens=3, completion_tokens=2, total_tokens=5
    )
    create = RecordingCreate(None)
    request = pb.GenerationInput(model="doubao-pro-4k", prompt="hi", max_tokens=16, temperature=0.0)
    response = run(ARK.chat(create, request))
    # A temperature of 0 is set (the field has presence), and sent.
    assert create.options == {
        "model": "doubao-pro-4k",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "temperature": 0.0,
    }
    assert response == pb.GenerateResponse(text_result="hello there")


def test_through_the_real_sdks_against_the_simulator(sim: SimulatorThread) -> None:
    chat_model = "doubao-1-5-pro-32k-250115"

    async def scenario() -> tuple[pb.GenerateResponse, pb.GenerateResponse, UpstreamError, UpstreamError]:
        # One event loop for every call: the SDKs' connection pools belong to the loop that opened them.
        ark = ArkClient(ARK_KEY, sim.url + "/api/v3", timeout=10)
        client = AsyncOpenAI(api_key=OPENAI_KEY, base_url=sim.url + "/v1", max_retries=0, timeout=10)
        ark_answer = await ark.chat(pb.GenerationInput(model=chat_model, prompt="a haiku", max_tokens=5))
        openai_answer = await OPENAI.chat(
            client.chat.completions.create, pb.GenerationInput(model="gpt-5.5", prompt="a haiku")
        )
        failures = []
        for call in (
            ark.chat(pb.GenerationInput(model=chat_model, prompt="[[fail:400]]")),
            OPENAI.chat(client.chat.completions.create, pb.GenerationInput(model="gpt-5.5", prompt="[[fail:429]]")),
        ):
            with pytest.raises(UpstreamError) as raised:
                await call
            failures.append(raised.value)
        await client.close()
        return ark_answer, openai_answer, failures[0], failures[1]

    ark_answer, openai_answer, ark_failure, openai_failure = asyncio.run(scenario())
    assert ark_answer.text_result and 0 < ark_answer.completion_tokens <= 5
    assert ark_answer.total_tokens == ark_answer.prompt_tokens + ark_answer.completion_tokens
    assert openai_answer.text_result and openai_answer.total_tokens > 0
    assert ark_failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert ark_failure.message.startswith("ark 400 InputTextSensitiveContentDetected: ")
    assert openai_failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert openai_failure.message == (
        "openai 429 rate_limit_exceeded: Rate limit reached for requests. Please try again later."
    )
