"""Health and metrics over HTTP on ``WORKER_PORT`` (2222), like ws-worker's Koa server.

``/`` and ``/livez`` answer 200 whenever the process serves HTTP at all (as ws-worker's do).
``/readyz`` answers 200 only while the pool can take work: the queue channel is joined, an
executor is warm and the pool is not draining; otherwise 503 with the reason, so a rolling
deploy waits for warm executors and a draining pod leaves the load balancer first.
``/metrics`` is the Prometheus exposition of the pool's own registry.

The server runs on its own threads and only reads the published snapshot. It is open to the
network, so what a client can hold is bounded: a connection that sends nothing for
``IDLE_TIMEOUT_S`` is closed, and at most ``MAX_CONNECTIONS`` are open at once; a new one
beyond that closes the oldest. Idle or slow clients therefore cannot take the process's file
descriptors (which the control socket and the executors need too) or keep ``/readyz`` from
answering.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from pool.supervisor.metrics import PoolMetrics
from pool.supervisor.snapshot import PoolSnapshot

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32  # a probe or a scrape is one short request: far more than they need
IDLE_TIMEOUT_S = 10.0  # seconds a connection may wait between two bytes of its request


class HttpError(RuntimeError):
    """The HTTP server could not start; the message names the host, port and setting."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the listen backlog
    snapshot: Callable[[], PoolSnapshot]
    metrics: PoolMetrics
    idle_timeout: float = IDLE_TIMEOUT_S

    def server_activate(self) -> None:
        self._open: dict[socket.socket, None] = {}  # connections being served, oldest first
        self._open_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` on its own thread, first dropping the oldest connections while
        ``MAX_CONNECTIONS`` are open (their threads see the end of input and finish)."""
        with self._open_lock:
            while len(self._open) >= MAX_CONNECTIONS:
                oldest = next(iter(self._open))
                del self._open[oldest]
                log.debug("http: %d connections open; dropping the oldest", MAX_CONNECTIONS)
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)
            self._open[request] = None
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-reply is not an error of ours: one debug line. Any
        other failure is logged with its traceback (socketserver would print it to stderr)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("http %s: connection ended early: %s", client_address[0], error)
        else:
            log.exception("http %s: request failed", client_address[0])


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "poolctl"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # the socket's timeout: idle or slow clients go
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path in ("/", "/livez"):
            self._reply(200, "application/json", b'{"status":"ok"}\n')
        elif path == "/readyz":
            ready, reason = self.server.snapshot().readiness()
            body = json.dumps({"ready": ready, "reason": reason}).encode() + b"\n"
            self._reply(200 if ready else 503, "application/json", body)
        elif path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, self.server.metrics.render())
        else:
            body = json.dumps({"error": f"no such path {path}; try /livez, /readyz, /metrics"})
            self._reply(404, "application/json", body.encode() + b"\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("http %s " + format, self.client_address[0], *args)


class HealthServer:
    """``/livez``, ``/readyz`` and ``/metrics`` on a daemon thread until ``close``."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], PoolSnapshot],
                 metrics: PoolMetrics, idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        server_class = _V6Server if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise HttpError(f"cannot serve HTTP on {host}:{port} (--http-host/--port, "
                            f"WORKER_PORT): {exc.strerror or exc}") from None
        self._server.snapshot = snapshot
        self._server.metrics = metrics
        self._server.idle_timeout = idle_timeout
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5}, name="http",
                                        daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP on %s:%d (/livez /readyz /metrics)", self._server.server_address[0],
                 self.port)

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
