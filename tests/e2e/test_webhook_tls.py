"""Webhooks over https (issue 17): the delivery verifies the receiver's certificate against the URL's host name
(sent as SNI and Host) while it connects to the address it resolved and checked, and a kept-alive connection serves
only the name it was verified for. The receiver's certificate chains to a throwaway authority the dispatcher is told
to trust with WEBHOOK_CA_FILE."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack.stack import LocalStack
from tests.conftest import wait_until
from tests.e2e.helpers import stop_dispatcher
from tests.e2e.test_webhooks import Receiver, create, deliveries, secret_of, verified

NAME = "localhost"


def certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    """A certificate for `subject`: an authority's own when `issuer` is None, else a server's that it signs."""
    now = datetime.now(UTC)
    signer_name = issuer[0].subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
    return builder.sign(signer_key, hashes.SHA256())


def pem(path: Path, *parts: bytes) -> Path:
    path.write_bytes(b"".join(parts))
    return path


@pytest.fixture
def tls_receiver(stack: LocalStack, tmp_path: Path) -> Iterator[Receiver]:
    """An https receiver on 127.0.0.1 named `localhost`, its certificate signed by a throwaway authority that the
    dispatcher (restarted with WEBHOOK_CA_FILE) trusts; the usual dispatcher afterwards."""
    first = socket.getaddrinfo(NAME, 443, type=socket.SOCK_STREAM)[0][4][0]
    if first != "127.0.0.1":
        pytest.skip(f"{NAME} resolves to {first} first here, not 127.0.0.1")
    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority = certificate("aitask test authority", authority_key, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate(NAME, server_key, (authority, authority_key))
    ca_file = pem(tmp_path / "ca.pem", authority.public_bytes(serialization.Encoding.PEM))
    chain = pem(tmp_path / "server.pem", server.public_bytes(serialization.Encoding.PEM))
    key = pem(
        tmp_path / "server.key",
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    receiver = Receiver(tls=context, name=NAME, keep_alive=True)
    receiver.start()
    stop_dispatcher(stack)
    stack.start("dispatcher", extra_env={"WEBHOOK_CA_FILE": str(ca_file)})
    try:
        yield receiver
    finally:
        receiver.stop()
        stop_dispatcher(stack)
        stack.start("dispatcher")


def test_an_https_webhook_is_verified_against_the_url_name_and_sent_to_the_checked_address(
    rest: httpx.Client, user_id: str, tls_receiver: Receiver
) -> None:
    task_id = create(rest, user_id, "text", tls_receiver.url)
    (request,) = wait_until(lambda: tls_receiver.of(task_id), timeout=40)
    assert verified(request, secret_of(rest, user_id)["secret"])["type"] == "task.completed"
    # The connection went to the resolved address (the receiver listens on 127.0.0.1 only), its TLS handshake and
    # Host header named the URL's host, and the certificate was checked against that name.
    assert tls_receiver.server_names and set(tls_receiver.server_names) == {NAME}
    assert request.headers["host"] == f"{NAME}:{tls_receiver.port}"
    # The attempt is recorded once answered (the receiver has the request a moment before).
    (logged,) = wait_until(
        lambda: [m for m in deliveries(rest, task_id) if m["state"] == "delivered"] or None, timeout=10
    )
    assert [attempt["status_code"] for attempt in logged["attempts"]] == [200]


def test_an_https_webhook_with_an_untrusted_certificate_is_not_sent(
    rest: httpx.Client, user_id: str, tls_receiver: Receiver
) -> None:
    """The same receiver, reached by its address: the certificate does not name 127.0.0.1, so no message body
    leaves (the attempt fails and is retried)."""
    assert_not_sent_by_address(rest, user_id, tls_receiver)


def test_a_connection_verified_for_one_name_serves_no_other_name_of_its_address(
    rest: httpx.Client, user_id: str, tls_receiver: Receiver
) -> None:
    """A delivery to `localhost` leaves a kept-alive connection to 127.0.0.1 verified for that name; a webhook to
    the same address by another name (which the certificate does not carry) must not ride on it."""
    verified_first = create(rest, user_id, "text", tls_receiver.url)
    wait_until(lambda: tls_receiver.of(verified_first), timeout=40)
    assert_not_sent_by_address(rest, user_id, tls_receiver)


def assert_not_sent_by_address(rest: httpx.Client, user_id: str, tls_receiver: Receiver) -> None:
    """A webhook to the receiver's address, which its certificate does not name: the attempt fails on the
    certificate and the receiver gets nothing."""
    url = tls_receiver.url.replace(f"//{NAME}:", "//127.0.0.1:")
    task_id = create(rest, user_id, "text", url)
    failed = wait_until(
        lambda: [m for m in deliveries(rest, task_id) if m["attempts"] and m["attempts"][0]["error"]], timeout=40
    )
    assert "certificate" in failed[0]["attempts"][0]["error"].lower(), failed
    assert tls_receiver.of(task_id) == []
