"""A provider's side of copying an output: stream the bytes of a result link the vendor gave.

Redirects are followed by hand, each target checked with the webhooks' address guard first: a vendor link that
redirects to a private, loopback or metadata address is not followed. The vendor's own link is trusted (it is
what the vendor answered; locally it is the simulator on 127.0.0.1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import grpc
import httpx

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.provider import UpstreamError, code_for_http_status
from aitask_common.webhook_addresses import AddressRefused, allowed_addresses

MAX_REDIRECTS: Final = 5
# The piece each stream message carries (well under gRPC's 4 MiB message limit).
CHUNK_BYTES: Final = 256 * 1024
DNS_TIMEOUT_SECONDS: Final = 5.0


async def fetch_output(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], max_bytes: int
) -> AsyncIterator[pb.FetchOutputChunk]:
    """The output at `url`, a chunk at a time; the first chunk carries its media type. UpstreamError says why
    not: retryable codes for what may pass (5xx, 429, timeouts), final ones for what never will."""
    origin = httpx.URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        target = httpx.URL(url)
        # The vendor key goes only to the vendor's own origin, never to a redirect elsewhere.
        same_origin = (target.scheme, target.host, target.port) == (origin.scheme, origin.host, origin.port)
        try:
            response = await client.send(
                client.build_request("GET", url, headers=headers if same_origin else {}), stream=True
            )
        except httpx.TimeoutException as error:
            raise UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED, f"output download timed out: {error}") from error
        except httpx.HTTPError as error:
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, f"output download failed: {error}") from error
        try:
            if response.is_redirect and response.next_request is not None:
                url = str(response.next_request.url)
                await _check_redirect(response.next_request.url)
                continue
            async for chunk in _body(response, max_bytes):
                yield chunk
            return
        finally:
            await response.aclose()
    raise UpstreamError(
        grpc.StatusCode.FAILED_PRECONDITION, f"the output link redirected more than {MAX_REDIRECTS} times"
    )


async def _check_redirect(target: httpx.URL) -> None:
    if target.scheme not in ("http", "https"):
        raise UpstreamError(grpc.StatusCode.PERMISSION_DENIED, f"the output link redirects to a {target.scheme} URL")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        await allowed_addresses(target.host, port, DNS_TIMEOUT_SECONDS, allow_private=False)
    except AddressRefused as error:
        raise UpstreamError(
            grpc.StatusCode.PERMISSION_DENIED, f"the output link redirects where it may not go ({error}): not followed"
        ) from error


async def _body(response: httpx.Response, max_bytes: int) -> AsyncIterator[pb.FetchOutputChunk]:
    status = response.status_code
    if status >= 400:
        # A link that is gone stays gone: final; the rest as any upstream answer.
        code = grpc.StatusCode.NOT_FOUND if status in (404, 410) else code_for_http_status(status)
        raise UpstreamError(code, f"the output link answered HTTP {status}")
    too_large = UpstreamError(
        grpc.StatusCode.OUT_OF_RANGE, f"the output is larger than OUTPUT_MAX_BYTES ({max_bytes} bytes): not stored"
    )
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large
    content_type = response.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    size = 0
    first = True
    try:
        async for data in response.aiter_bytes(CHUNK_BYTES):
            size += len(data)
            if size > max_bytes:
                raise too_large
            yield pb.FetchOutputChunk(data=data, content_type=content_type if first else "")
            first = False
    except httpx.HTTPError as error:
        raise UpstreamError(grpc.StatusCode.UNAVAILABLE, f"output download broke off: {error}") from error
    if first:
        yield pb.FetchOutputChunk(content_type=content_type)
