"""Health and metrics over real HTTP on loopback."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pool.supervisor import http as http_module
from pool.supervisor.http import HealthServer, HttpError
from pool.supervisor.metrics import PoolMetrics
from pool.supervisor.snapshot import ExecutorView, PoolSnapshot
from tests.supervisor.conftest import ROOT, http_get, wait_until

WARM = PoolSnapshot(executors=(ExecutorView(pid=1, state="idle"),
                               ExecutorView(pid=2, state="busy", run_id="r")),
                    queue_joined=True, size=2)


class Published:
    """Holds the snapshot the way the arbiter publishes it: a reference swapped whole."""

    def __init__(self, snapshot: PoolSnapshot) -> None:
        self.current = snapshot

    def __call__(self) -> PoolSnapshot:
        return self.current


@pytest.fixture
def published() -> Published:
    return Published(WARM)


@pytest.fixture
def metrics(published: Published) -> PoolMetrics:
    return PoolMetrics(published)


@pytest.fixture
def server(published: Published, metrics: PoolMetrics) -> Iterator[HealthServer]:
    srv = HealthServer("127.0.0.1", 0, published, metrics)
    srv.start()
    yield srv
    srv.close()


def get(server: HealthServer, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_liveness_always_answers(server: HealthServer, published: Published) -> None:
    published.current = PoolSnapshot()  # nothing booted, nothing joined
    assert get(server, "/livez")[0] == 200
    assert get(server, "/")[0] == 200


@pytest.mark.parametrize(("change", "reason"), [
    ({"queue_joined": False}, "queue channel not joined"),
    ({"executors": (ExecutorView(pid=1, state="booting"),)}, "no executor is ready yet"),
    ({"draining": True}, "draining"),
])
def test_not_ready_says_why(server: HealthServer, published: Published, change: dict,
                            reason: str) -> None:
    published.current = replace(WARM, **change)
    status, content_type, body = get(server, "/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {"ready": False, "reason": reason}


def test_ready_when_joined_warm_and_not_draining(server: HealthServer) -> None:
    status, _, body = get(server, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


def test_metrics_parse_and_follow_the_pool(server: HealthServer, published: Published,
                                           metrics: PoolMetrics) -> None:
    for reason in ("success", "success", "fail"):
        metrics.count("run_completed", {"reason": reason})
        metrics.observe("claim_to_complete", 0.8)
    published.current = replace(WARM, claims_in_flight=2)
    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    assert samples[("poolctl_runs_total", (("reason", "success"),))] == 2
    assert samples[("poolctl_runs_total", (("reason", "fail"),))] == 1
    assert samples[("poolctl_run_claim_to_complete_seconds_count", ())] == 3
    assert samples[("poolctl_executors", (("state", "busy"),))] == 1
    assert samples[("poolctl_executors", (("state", "booting"),))] == 0
    assert samples[("poolctl_claims_in_flight", ())] == 2


def test_unknown_path_is_404(server: HealthServer) -> None:
    status, _, body = get(server, "/healthz")
    assert status == 404 and "/readyz" in json.loads(body)["error"]


def test_a_port_in_use_is_a_clear_error(published: Published, metrics: PoolMetrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HttpError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            HealthServer("127.0.0.1", port, published, metrics)


def test_an_idle_or_slow_connection_is_closed_after_the_idle_timeout(
        published: Published, metrics: PoolMetrics) -> None:
    server = HealthServer("127.0.0.1", 0, published, metrics, idle_timeout=0.3)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle, \
                socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(b"GET /readyz HTTP/1.1\r\n")  # half a request, then nothing
            assert idle.recv(1024) == b""  # closed by the server, well before our 10 s
            assert slow.recv(1024) == b""
    finally:
        server.close()


def test_connections_beyond_the_cap_close_the_oldest_and_requests_are_answered(
        server: HealthServer) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
            for _ in range(http_module.MAX_CONNECTIONS + 8)]
    try:
        assert get(server, "/readyz")[0] == 200
        # the oldest ones were closed to make room
        assert held[0].recv(1024) == b""
    finally:
        for conn in held:
            conn.close()


def test_idle_connections_under_a_low_fd_limit_leave_readyz_and_status_answering(
        start_pool) -> None:
    # issue 13: with 256 file descriptors, 249 idle connections made /readyz and
    # `poolctl status` time out (a thread and a descriptor per connection, no bound)
    pool = start_pool("--size", "1")
    wait_until(lambda: readyz(pool.port) == 200, "the pool to be ready")
    resource.prlimit(pool.proc.pid, resource.RLIMIT_NOFILE, (256, 256))
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            try:
                idle.append(socket.create_connection(("127.0.0.1", pool.port), timeout=5))
            except OSError:
                break  # the old server stops accepting; what matters is what follows
        assert readyz(pool.port) == 200
        status = subprocess.run(
            [sys.executable, str(ROOT / "bin" / "poolctl"), "status", "--port", str(pool.port)],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert status.returncode == 0, status.stderr
        assert "idle" in status.stdout
    finally:
        for conn in idle:
            conn.close()
    assert pool.stop() == 0
    assert "Traceback" not in pool.output


def readyz(port: int) -> int:
    return http_get(port, "/readyz", timeout=15)[0]
