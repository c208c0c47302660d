"""The control socket: real unix sockets, permissions, one pool per path, the poolctl client."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pool.cli import main
from pool.supervisor.control import (
    ControlError,
    ControlServer,
    default_control_socket,
    request,
)
from pool.supervisor.snapshot import ExecutorView, PoolSnapshot
from pool.supervisor.status import render_status
from tests.supervisor.conftest import http_get, wait_until
from tests.supervisor.stub_pool import StubPool

NOBODY = 65534


def _snapshot() -> PoolSnapshot:
    return PoolSnapshot(
        executors=(
            ExecutorView(pid=os.getpid(), state="busy", run_id="run-1", runs_done=7,
                         started_at=time.time() - 125),
            ExecutorView(pid=os.getpid(), state="idle", runs_done=3, started_at=time.time()),
        ),
        claims_in_flight=1, runs_by_reason={"success": 9, "fail": 1}, queue_joined=True,
        size=2, pid=os.getpid())


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory other users may enter (pytest's tmp_path is 0700), for the uid tests."""
    path = Path(tempfile.mkdtemp(prefix="poolctl-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def pool() -> Iterator[StubPool]:
    stub = StubPool(_snapshot())
    yield stub
    stub.close()


@pytest.fixture
def server(sock_dir: Path, pool: StubPool) -> Iterator[ControlServer]:
    srv = ControlServer(str(sock_dir / "ctl.sock"), pool)
    srv.start()
    yield srv
    srv.close()


def test_default_path_is_keyed_by_port() -> None:
    with tempfile.TemporaryDirectory() as runtime:
        assert default_control_socket(2222, {"XDG_RUNTIME_DIR": runtime}) == \
            f"{runtime}/poolctl-2222.sock"
    assert default_control_socket(3000, {}) == f"/tmp/poolctl-{os.getuid()}-3000.sock"


def test_socket_is_owner_only(server: ControlServer) -> None:
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_status_returns_the_snapshot_with_memory(server: ControlServer) -> None:
    reply = request(server.path, "status")
    assert reply["claims_in_flight"] == 1 and reply["runs_by_reason"] == {"success": 9, "fail": 1}
    busy = reply["executors"][0]
    assert (busy["state"], busy["run_id"], busy["runs_done"]) == ("busy", "run-1", 7)
    assert busy["rss_bytes"] > 1_000_000  # this test process's real RSS


def test_commands_run_in_the_pool_loop(server: ControlServer, pool: StubPool) -> None:
    assert request(server.path, "scale", size=3) == "size 3 (was 2)"
    assert pool.snapshot().size == 3
    assert request(server.path, "drain") == "draining"
    assert request(server.path, "stop", graceful=False) == "stopping now"
    assert pool.commands == [("scale", {"size": 3}), ("drain", {}), ("stop", {"graceful": False})]


def test_refusals_from_the_loop_reach_the_operator(server: ControlServer) -> None:
    with pytest.raises(ControlError, match="size must be at least 1, got 0"):
        request(server.path, "scale", size=0)
    with pytest.raises(ControlError, match="integer size"):
        request(server.path, "scale", size="three")
    with pytest.raises(ControlError, match="unknown command 'reboot'"):
        request(server.path, "reboot")


def test_bad_requests_get_error_replies_and_the_connection_survives(
        server: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(server.path)
        s.settimeout(10)
        reader = s.makefile("rb")
        s.sendall(b"this is not json\n")
        assert json.loads(reader.readline()) == {"ok": False,
                                                 "error": "request is not valid JSON"}
        s.sendall(b'["status"]\n')
        assert "JSON object" in json.loads(reader.readline())["error"]
        s.sendall(b"[" * 60_000 + b"\n")
        assert "nested too deeply" in json.loads(reader.readline())["error"]
        s.sendall(b'{"cmd": "status"}\n')
        assert json.loads(reader.readline())["ok"] is True


def test_misbehaving_clients_of_a_real_pool_get_answers_and_leave_no_traceback(
        start_pool) -> None:
    # issue 13: deeply nested JSON got no reply and a RecursionError traceback; clients that
    # hang up before the reply left BrokenPipe/ConnectionReset tracebacks in the log
    pool = start_pool("--size", "1")
    path = default_control_socket(pool.port)
    # the control socket comes up a moment before HTTP: wait for both
    wait_until(lambda: os.path.exists(path) and pool_answers(pool.port) and http_up(pool.port),
               "the pool to serve")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(10)
        reader = s.makefile("rb")
        s.sendall(b"[" * 60_000 + b"\n")
        assert json.loads(reader.readline()) == {
            "ok": False, "error": "request is nested too deeply to be a command"}
        s.sendall(b'{"cmd": "status"}\n')  # and the connection still serves
        assert json.loads(reader.readline())["ok"] is True
    reset = struct.pack("ii", 1, 0)  # SO_LINGER 0: close with a reset, reply unread
    for _ in range(5):
        with socket.socket(socket.AF_UNIX) as early:
            early.connect(path)
            early.sendall(b'{"cmd": "status"}\n')
        with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as early:
            early.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
            early.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    assert pool_answers(pool.port)
    assert pool.stop() == 0
    assert "Traceback" not in pool.output and "Exception" not in pool.output, pool.output


def http_up(port: int) -> bool:
    return http_get(port, "/livez")[0] == 200


def pool_answers(port: int) -> bool:
    try:
        return request(default_control_socket(port), "status", timeout=10)["size"] == 1
    except ControlError:
        return False


def test_a_live_socket_refuses_a_second_pool(server: ControlServer, pool: StubPool) -> None:
    second = ControlServer(server.path, pool)
    with pytest.raises(ControlError, match="already running with control socket"):
        second.start()
    assert request(server.path, "status")["size"] == 2  # the first one still answers


def test_a_stale_socket_is_replaced(sock_dir: Path, pool: StubPool) -> None:
    path = str(sock_dir / "ctl.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays; nobody listens: what a SIGKILLed pool leaves behind
    with pytest.raises(ControlError, match="stale socket"):
        request(path, "status")
    srv = ControlServer(path, pool)
    srv.start()
    try:
        assert request(path, "status")["size"] == 2
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        srv.close()
    assert not os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_left_alone(sock_dir: Path, pool: StubPool) -> None:
    path = sock_dir / "ctl.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="is not a socket"):
        ControlServer(str(path), pool).start()
    assert path.read_text() == "precious"


def _connect_as_nobody(path: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({path!r})\n"
        "except PermissionError:\n"
        "    print('EACCES'); sys.exit()\n"
        "s.sendall(b'{\"cmd\": \"drain\"}\\n')\n"
        "print(s.makefile().readline())\n"
    )
    return subprocess.run(["/usr/bin/python3", "-c", script], user=NOBODY, capture_output=True,
                          text=True, timeout=30, check=True)


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root")
def test_another_user_cannot_connect(server: ControlServer) -> None:
    assert _connect_as_nobody(server.path).stdout.strip() == "EACCES"


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root")
def test_another_user_is_refused_even_if_the_mode_is_loosened(
        server: ControlServer, pool: StubPool) -> None:
    os.chmod(server.path, 0o666)
    reply = json.loads(_connect_as_nobody(server.path).stdout)
    assert reply == {"ok": False, "error": f"permission denied: uid {NOBODY} does not own "
                                           "this pool"}
    assert pool.commands == []
    assert pool.snapshot().draining is False


def test_cli_without_a_pool_says_so(sock_dir: Path) -> None:
    path = str(sock_dir / "none.sock")
    result = CliRunner().invoke(main, ["status", "--control-socket", path])
    assert result.exit_code == 1
    assert f"no pool is running with control socket {path}" in result.output
    assert "Traceback" not in result.output


def test_cli_finds_the_socket_from_the_port(monkeypatch: pytest.MonkeyPatch, sock_dir: Path,
                                            pool: StubPool) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(sock_dir))
    monkeypatch.setenv("WORKER_PORT", "2399")
    srv = ControlServer(str(sock_dir / "poolctl-2399.sock"), pool)
    srv.start()
    try:
        status = CliRunner().invoke(main, ["status"])
        assert status.exit_code == 0, status.output
        assert "claims in flight: 1" in status.output
        assert "runs by reason: fail=1, success=9" in status.output
        scaled = CliRunner().invoke(main, ["scale", "4"])
        assert (scaled.exit_code, scaled.output.strip()) == (0, "size 4 (was 2)")
        refused = CliRunner().invoke(main, ["scale", "0"])
        assert refused.exit_code == 1 and "size must be at least 1" in refused.output
        stopped = CliRunner().invoke(main, ["stop", "--now"])
        assert (stopped.exit_code, stopped.output.strip()) == (0, "stopping now")
    finally:
        srv.close()


def test_status_table() -> None:
    now = 1_000_000.0
    reply = {
        "pid": 10, "size": 2, "queue_joined": True, "draining": True, "claims_in_flight": 0,
        "runs_by_reason": {"success": 4, "kill": 1}, "sandbox": "uid",
        "executors": [
            {"pid": 101, "state": "busy", "run_id": "abc", "runs_done": 4,
             "started_at": now - 3725, "rss_bytes": 52_428_800},
            {"pid": 102, "state": "booting", "run_id": None, "runs_done": 0,
             "started_at": now - 2, "rss_bytes": None},
        ],
    }
    lines = render_status(reply, now=now).splitlines()
    assert lines[0] == "pool pid 10: size 2, draining, queue joined"
    assert lines[2] == "runs by reason: kill=1, success=4"
    assert lines[3] == "sandbox: uid"
    assert lines[5].split() == ["PID", "STATE", "RUN", "RUNS", "RSS", "AGE"]
    assert lines[6].split() == ["101", "busy", "abc", "4", "50.0MiB", "1h02m"]
    assert lines[7].split() == ["102", "booting", "-", "0", "-", "2s"]
