"""What the default sandbox does to a run: the watchdog and the kills reach every process in it,
and what jobs legitimately need (DNS files, hosts, CA certificates, a user) still works."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.executor.conftest import SANDBOX, executor, run

ESCAPE = "const p = setTimeout.constructor('return process')();"
HOST = "poolctl-ca-test.internal"


def marked(marker: str) -> list[psutil.Process]:
    return [proc for proc in psutil.process_iter(["cmdline"])
            if marker in " ".join(proc.info["cmdline"] or [])]


def gone(marker: str, deadline: float = 10.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not marked(marker):
            return True
        time.sleep(0.05)
    return False


def test_the_default_sandbox_is_on() -> None:
    assert SANDBOX["mode"] == ("uid" if os.geteuid() == 0 else "namespaces")


def test_a_memory_bomb_in_a_child_process_is_an_oom_kill() -> None:
    marker = f"poolctl-childbomb-{uuid.uuid4().hex}"
    child = ("const a = []; const t = setInterval(() => { a.push(Buffer.alloc(32 << 20, 1)); "
             "if (a.length >= 32) clearInterval(t); }, 20); setInterval(() => {}, 1000); "
             f"// {marker}")
    body = (f"fn(async s => {{ {ESCAPE} const cp = p.getBuiltinModule('child_process'); "
            f"cp.spawn(p.execPath, ['-e', {child!r}], {{ stdio: 'ignore' }}); "
            "await new Promise(r => setTimeout(r, 15000)); return s; })")
    with executor("strict") as handle:
        result = run(handle, body, limits={"memory_mb": 128, "timeout_ms": 14000})
    complete = result.complete
    assert (complete["reason"], complete["error_type"]) == ("kill", "OOMError"), complete
    assert gone(marker), [p.pid for p in marked(marker)]


def test_a_timeout_kills_every_process_of_the_run() -> None:
    marker = f"poolctl-timeout-{uuid.uuid4().hex}"
    body = (f"fn(s => {{ {ESCAPE} const cp = p.getBuiltinModule('child_process'); "
            f"cp.spawn('/bin/sh', ['-c', 'sleep 600; :', '{marker}'], "
            "{ detached: true, stdio: 'ignore' }).unref(); "
            "const end = Date.now() + 60000; while (Date.now() < end) {} return s; })")
    with executor("strict") as handle:
        result = run(handle, body, limits={"timeout_ms": 1500})
    assert result.complete["error_type"] == "TimeoutError", result.complete
    assert gone(marker), [p.pid for p in marked(marker)]


def test_context_keeps_its_shim_but_kills_what_a_run_left() -> None:
    marker = f"poolctl-context-{uuid.uuid4().hex}"
    body = (f"fn(async s => {{ {ESCAPE} const cp = p.getBuiltinModule('child_process'); "
            f"cp.spawn('/bin/sh', ['-c', 'sleep 600; :', '{marker}'], "
            "{ detached: true, stdio: 'ignore' }).unref(); "
            "await new Promise(r => setTimeout(r, 200)); return s; })")
    with executor("context") as handle:
        shim = handle.ready["shim_pid"]
        result = run(handle, body)
        assert result.complete["reason"] == "success", result.complete
        assert gone(marker), [p.pid for p in marked(marker)]
        assert result.ready["shim_pid"] == shim and not result.recycled  # the shim lives on
        again = run(handle, "fn(s => ({ data: { ok: true } }))")
        assert again.complete["reason"] == "success"


# --- what jobs legitimately need ------------------------------------------------------------------


def _certificates(folder: str) -> tuple[str, str, str]:
    """A private CA and a server certificate for HOST signed by it: (ca.pem, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "poolctl test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(folder, name) for name in ("ca.pem", "server.pem", "server.key")]
    blobs = [ca.public_bytes(serialization.Encoding.PEM),
             cert.public_bytes(serialization.Encoding.PEM),
             key.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())]
    for path, blob in zip(paths, blobs, strict=True):
        with open(path, "wb") as fh:
            fh.write(blob)
        os.chmod(path, 0o644)
    return paths[0], paths[1], paths[2]


@pytest.fixture
def https_server() -> Iterator[tuple[int, str, str]]:
    """An HTTPS server on loopback for HOST: (port, CA file, hosts file naming HOST)."""
    folder = tempfile.mkdtemp(prefix="poolctl-ca-")
    os.chmod(folder, 0o755)  # uid mode: the slot uid binds these files, so it must reach them
    ca, cert, key = _certificates(folder)
    hosts = os.path.join(folder, "hosts")
    with open(hosts, "w") as fh:
        fh.write(f"127.0.0.1 localhost\n127.0.0.1 {HOST}\n")
    os.chmod(hosts, 0o644)

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"hello over private TLS"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca, hosts
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_sandboxed_job_calls_https_by_a_hosts_name_with_a_private_ca(https_server) -> None:
    port, ca, hosts = https_server
    body = (f"fn(async s => {{ {ESCAPE} const https = p.getBuiltinModule('https'), "
            "fs = p.getBuiltinModule('fs'), os = p.getBuiltinModule('os'); "
            "const text = await new Promise((resolve, reject) => "
            f"https.get('https://{HOST}:{port}/', res => {{ let b = ''; "
            "res.on('data', d => b += d); res.on('end', () => resolve(b)); }).on('error', reject)); "
            "return { data: { text, user: os.userInfo().username, "
            "resolv: fs.existsSync('/etc/resolv.conf'), "
            "nsswitch: fs.existsSync('/etc/nsswitch.conf') } }; })")
    sandbox = dict(SANDBOX, hosts_file=hosts)
    with executor("strict", env={**os.environ, "NODE_EXTRA_CA_CERTS": ca},
                  sandbox=sandbox) as handle:
        assert handle.ready["sandbox"] == SANDBOX["mode"]
        result = run(handle, body)
    complete = result.complete
    assert complete["reason"] == "success", complete
    data = json.loads(complete["final_state"])["data"]
    assert data["text"] == "hello over private TLS"
    assert data["user"] and data["resolv"] == os.path.exists("/etc/resolv.conf")
    assert data["nsswitch"] == os.path.exists("/etc/nsswitch.conf")
