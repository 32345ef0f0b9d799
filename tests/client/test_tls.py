"""An https gateway URL: the client speaks TLS and verifies the gateway's certificate, against the system's
authorities or those the caller names (AITASK_CA_FILE, root_certificates). A gRPC server with a throwaway
authority's certificate stands in for a TLS-terminating Envoy (fast tier)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from aitask_client import NO_RETRIES, Client, Unavailable
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aitask.v1 import task_service_pb2 as pb
from aitask.v1 import task_service_pb2_grpc
from devstack.processes import free_port
from tests.e2e.test_webhook_tls import certificate


class Catalogue(task_service_pb2_grpc.TaskServiceServicer):
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:  # noqa: N802
        model = pb.CatalogueModel(provider="volcengine", model="tls-model", type="text", available=True)
        return pb.ListModelsResponse(success=True, data=pb.ModelList(models=[model]))


@pytest.fixture
def tls_gateway() -> Iterator[tuple[str, bytes]]:
    """An https URL for `localhost` and the PEM of the authority that signed its certificate."""
    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority = certificate("aitask client test authority", authority_key, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate("localhost", server_key, (authority, authority_key))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    credentials = grpc.ssl_server_credentials([(key_pem, server.public_bytes(serialization.Encoding.PEM))])
    server_process = grpc.server(futures.ThreadPoolExecutor(2))
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(Catalogue(), server_process)
    port = free_port()
    server_process.add_secure_port(f"127.0.0.1:{port}", credentials)
    server_process.start()
    try:
        yield f"https://localhost:{port}", authority.public_bytes(serialization.Encoding.PEM)
    finally:
        server_process.stop(0)


def test_a_named_authority_is_trusted(tls_gateway: tuple[str, bytes]) -> None:
    url, authority = tls_gateway
    with Client(url, "key", root_certificates=authority) as client:
        assert [model.model for model in client.models()] == ["tls-model"]


def test_the_ca_file_of_the_environment_is_trusted(
    tls_gateway: tuple[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, authority = tls_gateway
    (tmp_path / "ca.pem").write_bytes(authority)
    monkeypatch.setenv("AITASK_CA_FILE", str(tmp_path / "ca.pem"))
    with Client(url, "key") as client:
        assert client.models()[0].model == "tls-model"


def test_an_unknown_authority_is_refused(tls_gateway: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AITASK_CA_FILE", raising=False)
    url, _ = tls_gateway
    with Client(url, "key", retry=NO_RETRIES, timeout=5) as client, pytest.raises(Unavailable):
        client.models()
