"""Health and metrics over HTTP on ``WORKER_PORT`` (2222), like ws-worker's Koa server.

``/`` and ``/livez`` answer 200 whenever the process serves HTTP at all (as ws-worker's do).
``/readyz`` answers 200 only while the pool can take work: the queue channel is joined, an
executor is warm and the pool is not draining; otherwise 503 with the reason, so a rolling
deploy waits for warm executors and a draining pod leaves the load balancer first.
``/metrics`` is the Prometheus exposition of the pool's own registry.

The server runs on its own threads and only reads the published snapshot.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from pool.supervisor.metrics import PoolMetrics
from pool.supervisor.snapshot import PoolSnapshot

log = logging.getLogger(__name__)


class HttpError(RuntimeError):
    """The HTTP server could not start; the message names the host, port and setting."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    snapshot: Callable[[], PoolSnapshot]
    metrics: PoolMetrics


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "poolctl"

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
                 metrics: PoolMetrics) -> None:
        server_class = _V6Server if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise HttpError(f"cannot serve HTTP on {host}:{port} (--http-host/--port, "
                            f"WORKER_PORT): {exc.strerror or exc}") from None
        self._server.snapshot = snapshot
        self._server.metrics = metrics
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
