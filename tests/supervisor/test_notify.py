"""systemd's notify protocol against a real unix datagram socket and a real ``poolctl start``.

The test plays systemd's part: it binds the socket, passes ``NOTIFY_SOCKET`` (a path, or an
abstract ``@`` address) and reads what the pool sends while it boots, joins, runs, reloads,
waits for an unreachable Lightning and stops.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pool.devserver.server import DevServer
from pool.supervisor.notify import watchdog_interval
from tests.supervisor.conftest import (
    DEADLINE,
    SLOW_BODY,
    free_port,
    http_get,
    job,
    plan,
    wait_run,
)


class SystemdSocket:
    """A notify socket as systemd binds it: every datagram read, split into its fields."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, deadline: float = DEADLINE,
                 after: int = 0) -> int:
        """Index of the first message from ``after`` on that has ``key`` (= ``value``)."""
        end = time.monotonic() + deadline
        index = after
        while True:
            while index < len(self.messages):
                fields = self.messages[index]
                if key in fields and (value is None or value in fields[key]):
                    return index
                index += 1
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value or '*'} within {deadline}s; got "
                                     f"{self.messages[after:]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[SystemdSocket]:
    sock = SystemdSocket(str(tmp_path / "notify"))
    yield sock
    sock.close()


@pytest.fixture
def notify_abstract() -> Iterator[SystemdSocket]:
    sock = SystemdSocket(f"@poolctl-test-{uuid.uuid4().hex}")
    yield sock
    sock.close()


def test_ready_only_once_joined_then_status_reload_and_stopping(
        lightning: DevServer, start_pool, notify_path: SystemdSocket) -> None:
    systemd = notify_path
    pool = start_pool("--size", "2", env={"NOTIFY_SOCKET": systemd.address})
    ready = systemd.wait_for("READY", "1")
    assert http_get(pool.port, "/readyz")[0] == 200  # systemd hears READY=1 no earlier than /readyz says so
    assert "EXTEND_TIMEOUT_USEC" in systemd.messages[0]  # the start job is kept alive
    assert all("READY" not in m for m in systemd.messages[:ready])
    assert systemd.messages[systemd.wait_for("STATUS")]["STATUS"]  # something to show

    run_id = lightning.enqueue(plan(job(SLOW_BODY)))
    systemd.wait_for("STATUS", "1 run in flight", after=ready)
    assert wait_run(lightning, run_id)["state"] == "success"
    idle = systemd.wait_for("STATUS", "0 runs in flight", after=ready)

    pool.proc.send_signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING", "1", after=idle)
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now_usec - int(systemd.messages[reloading]["MONOTONIC_USEC"]) < DEADLINE * 1e6
    systemd.wait_for("READY", "1", after=reloading + 1)  # the new executors are in

    pool.proc.send_signal(signal.SIGTERM)
    systemd.wait_for("STOPPING", "1", after=reloading)
    assert pool.proc.wait(DEADLINE) == 0


def test_abstract_socket_and_watchdog_pings_from_the_loop(
        lightning: DevServer, start_pool, notify_abstract: SystemdSocket) -> None:
    systemd = notify_abstract
    pool = start_pool("--size", "1", env={"NOTIFY_SOCKET": systemd.address,
                                          "WATCHDOG_USEC": "1000000"})
    ready = systemd.wait_for("READY", "1")
    first = systemd.wait_for("WATCHDOG", "1", after=ready)
    systemd.wait_for("WATCHDOG", "1", after=first + 1)  # again, half a second later
    assert pool.stop() == 0


def test_unreachable_lightning_extends_the_start_and_never_reports_ready(
        lightning: DevServer, start_pool, notify_path: SystemdSocket) -> None:
    systemd = notify_path
    nowhere = f"ws://127.0.0.1:{free_port()}/worker"  # nothing listens there
    pool = start_pool("--size", "1", env={"NOTIFY_SOCKET": systemd.address,
                                          "WORKER_LIGHTNING_SERVICE_URL": nowhere})
    connecting = systemd.wait_for("STATUS", "connecting to Lightning")
    again = systemd.wait_for("EXTEND_TIMEOUT_USEC", after=connecting + 1)
    systemd.wait_for("EXTEND_TIMEOUT_USEC", after=again + 1)
    assert all("READY" not in m for m in systemd.messages)
    assert pool.proc.poll() is None  # alive, still trying: systemd has no reason to kill it
    assert pool.stop() == 0
    systemd.wait_for("STOPPING", "1", after=again)  # sent before it exited


def test_watchdog_is_only_ours_when_systemd_names_our_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}, pid=42) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"}, pid=42) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7"}, pid=42) is None
    assert watchdog_interval({}, pid=42) is None
