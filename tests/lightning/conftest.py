"""Fixtures: a real DevServer per test and real PhoenixSockets connected to it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pool import __version__
from pool.devserver.server import DevServer
from pool.lightning.phoenix import PhoenixSocket, build_socket_url
from pool.lightning.tokens import make_worker_token, new_worker_id
from tests.devserver.conftest import PLAN  # noqa: F401 (cases.json's first plan, shared)

CREDENTIALS = {"cred-demo": {"username": "demo", "password": "pw-demo"}}
DATACLIPS = {"clip-demo": {"data": {"patients": [1, 2, 3]}}}
DEADLINE = 10.0  # generous: every wait here normally ends in milliseconds


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer() as dev:
        yield dev


SocketFactory = Callable[..., PhoenixSocket]


@pytest.fixture
def connect(server: DevServer) -> Iterator[SocketFactory]:
    """Open a socket to the server (waits until open unless ``wait=False``); closes them all."""
    opened: list[PhoenixSocket] = []

    def factory(secret: str | None = None, wait: bool = True, url: str | None = None,
                **options: Any) -> PhoenixSocket:
        token = make_worker_token(secret or server.secret, new_worker_id())
        options.setdefault("reconnect_delays", (0.05, 0.1))
        options.setdefault("rejoin_delays", (0.05, 0.1))
        options.setdefault("timeout", DEADLINE)
        sock = PhoenixSocket(build_socket_url(url or server.url, token, __version__), **options)
        opened.append(sock)
        sock.connect()
        if wait:
            assert sock.wait_open(DEADLINE), "socket did not open"
        return sock

    yield factory
    for sock in opened:
        sock.disconnect()


def wait_until(predicate: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll for an outcome (never a timing assertion: the deadline is many times too long)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def ipv6_first_resolver(*_args: Any, **_kwargs: Any) -> list[tuple[Any, ...]]:
    """Resolve anything to ``::1`` first, then ``127.0.0.1`` (like many ``localhost`` setups)."""
    port = _args[1]
    return [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
    ]
