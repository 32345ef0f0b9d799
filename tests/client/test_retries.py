"""Safe retries: a create whose answer is lost on a cut connection is retried and still makes exactly one task."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aitask_client import NO_RETRIES, Client, Unavailable

from devstack.stack import LocalStack
from tests.e2e.helpers import SEEDREAM

FRAME_HEADER = 9  # HTTP/2: length (3 bytes), type, flags, stream id (4 bytes)


@dataclass
class CuttingProxy:
    """A TCP proxy on loopback in front of Envoy's HTTP/2 port. While `cut_next` is set, the next connection
    forwards the request and the server's connection-level frames (SETTINGS, PINGs), then closes both sides at
    the first frame of a response: the server did the work, the client never hears of it."""

    upstream_port: int
    cut_next: bool = True
    cuts: int = 0
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            cut, self.cut_next = self.cut_next, False
            threading.Thread(target=self._pipe, args=(downstream, upstream), daemon=True).start()
            target = self._cut_at_first_response if cut else self._pipe
            threading.Thread(target=target, args=(upstream, downstream), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source, sink)

    def _cut_at_first_response(self, server: socket.socket, client: socket.socket) -> None:
        buffered = b""
        try:
            while data := server.recv(65536):
                buffered += data
                while len(buffered) >= FRAME_HEADER:
                    length = int.from_bytes(buffered[:3], "big")
                    if len(buffered) < FRAME_HEADER + length:
                        break
                    (stream,) = struct.unpack(">I", buffered[5:9])
                    if stream & 0x7FFFFFFF:
                        self.cuts += 1
                        return
                    client.sendall(buffered[: FRAME_HEADER + length])
                    buffered = buffered[FRAME_HEADER + length :]
        except OSError:
            pass
        finally:
            _close(server, client)


def _close(*ends: socket.socket) -> None:
    """Shut both ends down first: a plain close() leaves the connection open while the other pump's recv holds it."""
    for end in ends:
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()


@pytest.fixture
def proxy(stack: LocalStack) -> Iterator[CuttingProxy]:
    cutting = CuttingProxy(stack.ports.envoy)
    threading.Thread(target=cutting.serve, daemon=True).start()
    try:
        yield cutting
    finally:
        cutting.listener.close()


def test_a_create_retried_through_a_cut_connection_makes_one_task(
    stack: LocalStack, proxy: CuttingProxy, api_key: str, user_id: str
) -> None:
    with Client(proxy.url, api_key) as client:
        task = client.create_image("cut once", model=SEEDREAM["model"])
        assert proxy.cuts == 1  # the first answer was lost; the retry's came through
        assert [listed.id for listed in client.list()] == [task.id]
        assert client.wait(task, timeout=60).status == "completed"
    assert stack.tasks().count_documents({"prompt": "cut once", "user_id": user_id}) == 1


def test_without_retries_the_cut_is_an_unavailable_error(proxy: CuttingProxy, api_key: str) -> None:
    with Client(proxy.url, api_key, retry=NO_RETRIES) as client, pytest.raises(Unavailable):
        client.create_image("cut, no retry", model=SEEDREAM["model"])
    assert proxy.cuts == 1
