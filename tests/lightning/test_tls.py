"""``wss://``: the worker's own non-blocking TLS reads and writes against the dev server serving
TLS with a certificate made here — a whole run with 8 MB both ways — and an untrusted
certificate refused with a clear, retried error."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pool import __version__
from pool.devserver.server import DevServer
from pool.lightning.phoenix import PhoenixSocket, build_socket_url
from pool.lightning.tokens import make_worker_token, new_worker_id
from tests.lightning.conftest import DEADLINE, wait_until
from tests.lightning.test_wsframes import run_big_messages


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, its own issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "poolctl test Lightning")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[DevServer, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with DevServer(tls=context) as server:
        yield server, cert


def open_socket(server: DevServer) -> PhoenixSocket:
    token = make_worker_token(server.secret, new_worker_id())
    return PhoenixSocket(build_socket_url(server.url, token, __version__), timeout=DEADLINE,
                         reconnect_delays=(0.2,), rejoin_delays=(0.2,)).connect()


def test_a_whole_run_with_large_messages_over_wss(tls_server, monkeypatch) -> None:
    server, cert = tls_server
    assert server.url.startswith("wss://")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # how an operator trusts a private CA
    sock = open_socket(server)
    try:
        assert sock.wait_open(DEADLINE), "no TLS connection"
        run_big_messages(server, sock)
    finally:
        sock.disconnect()


def test_an_untrusted_certificate_is_refused_clearly_and_retried(tls_server, caplog,
                                                                  monkeypatch) -> None:
    server, _cert = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    caplog.set_level(logging.ERROR, logger="pool.lightning.phoenix")
    sock = open_socket(server)
    try:
        wait_until(lambda: sum("CERTIFICATE_VERIFY_FAILED" in r.getMessage()
                               for r in caplog.records) >= 2,
                   "two refused attempts, each saying why")
        assert not sock.is_open
        assert "retrying in" in caplog.records[-1].getMessage()
    finally:
        sock.disconnect()
