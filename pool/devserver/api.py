"""The dev server's HTTP API (JSON), for shells, ``make dev`` and tools outside Python.

    GET  /api/health                      {"ok": true, "url", "runs", "workers"}
    POST /api/runs                        {plan, credentials?, dataclips?, queue?, wakeup?}
                                          -> 201 {"id"}; a bad plan -> 422 {"error"}
    GET  /api/runs                        summaries: id, state, reason, queue, times
    GET  /api/runs/<id>                   the full record (events, steps, dataclips, times)
    GET  /api/runs/<id>/wait?timeout=S    the record once final; 408 {"error", "run"} if not
    POST /api/faults                      {"kind": "drop_sockets"} | {"kind": "drop_socket_on",
                                          "event", "run_id"?, "times"?} | {"kind":
                                          "reply_error_on", "event", "response"?, ...} |
                                          {"kind": "hold_reply_on", "event", "seconds", ...} |
                                          {"kind": "run_token_lifetime", "seconds"} |
                                          {"kind": "rotate_secret", "secret", "accept_old"?}
    GET  /api/rejections                  every refusal so far, with its reason

Malformed requests get 400 with the reason; unknown paths 404.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from pool.devserver.plans import InvalidPlan

if TYPE_CHECKING:
    from pool.devserver.server import DevServer

log = logging.getLogger("pool.devserver.api")
MAX_WAIT_S = 600.0
MAX_BODY_BYTES = 50 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.extra = status, extra or {}


def _summary(run: dict) -> dict:
    return {key: run[key] for key in ("id", "state", "reason", "error_type", "queue", "times")}


def _fault(server: DevServer, body: dict) -> None:
    kind = body.get("kind")
    options = {key: body[key] for key in ("run_id", "times") if key in body}
    try:
        if kind == "drop_sockets":
            server.drop_sockets()
        elif kind == "drop_socket_on":
            server.drop_socket_on(body.get("event"), **options)
        elif kind == "reply_error_on":
            server.reply_error_on(body.get("event"), body.get("response", "injected"), **options)
        elif kind == "hold_reply_on":
            server.hold_reply_on(body.get("event"), body.get("seconds"), **options)
        elif kind == "run_token_lifetime":
            seconds = body.get("seconds")
            if seconds is not None and (not isinstance(seconds, int | float) or seconds <= 0):
                raise ValueError(f"seconds must be a positive number or null, got {seconds!r}")
            server.set_run_token_lifetime(seconds)
        elif kind == "rotate_secret":
            secret = body.get("secret")
            if not isinstance(secret, str) or not secret:
                raise ValueError("secret must be a non-empty string (the new WORKER_SECRET)")
            server.rotate_secret(secret, bool(body.get("accept_old", False)))
        else:
            raise ValueError(f"unknown fault kind {kind!r}: drop_sockets, drop_socket_on, "
                             "reply_error_on, hold_reply_on, run_token_lifetime, rotate_secret")
    except (ValueError, TypeError) as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None


class DevApi:
    """A stdlib HTTP server in a daemon thread, calling into a ``DevServer``."""

    def __init__(self, server: DevServer, host: str, port: int) -> None:
        self.server = server
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        name="devserver-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        server = self.server
        parts = [part for part in path.split("/") if part]
        if parts[:1] != ["api"]:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")
        parts = parts[1:]
        if method == "GET" and parts == ["health"]:
            return 200, {"ok": True, "url": server.url, "runs": len(server.core.book.runs),
                         "workers": len(server.core.live)}
        if method == "GET" and parts == ["rejections"]:
            return 200, list(server.rejections)
        if parts == ["runs"] and method == "POST":
            if not isinstance(body, dict) or "plan" not in body:
                raise ApiError(HTTPStatus.BAD_REQUEST, "body must be a JSON object with a 'plan'")
            try:
                run_id = server.enqueue(body["plan"], body.get("credentials"), body.get("dataclips"),
                                        body.get("queue", "manual"), bool(body.get("wakeup", True)))
            except InvalidPlan as exc:
                raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
            return 201, {"id": run_id}
        if parts == ["runs"] and method == "GET":
            return 200, [_summary(run) for run in server.runs()]
        if len(parts) in (2, 3) and parts[0] == "runs" and method == "GET":
            run_id = parts[1]
            if server.core.book.get(run_id) is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no run {run_id!r}")
            if len(parts) == 2:
                return 200, server.run(run_id)
            if parts[2] == "wait":
                try:
                    timeout = min(float(query.get("timeout", "30")), MAX_WAIT_S)
                except ValueError:
                    raise ApiError(HTTPStatus.BAD_REQUEST, "timeout must be a number") from None
                try:
                    return 200, server.wait_for_run(run_id, timeout)
                except TimeoutError as exc:
                    raise ApiError(HTTPStatus.REQUEST_TIMEOUT, str(exc),
                                   {"run": server.run(run_id)}) from None
        if method == "POST" and parts == ["faults"]:
            if not isinstance(body, dict):
                raise ApiError(HTTPStatus.BAD_REQUEST, "body must be a JSON object with a 'kind'")
            _fault(server, body)
            return 200, {"ok": True}
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                try:
                    body = self._read_body() if method == "POST" else None
                    status, payload = api.route(method, url.path, query, body)
                except ApiError as exc:
                    status, payload = exc.status.value, {"error": str(exc), **exc.extra}
                except Exception as exc:  # a dev API bug answers 500, the server stays up
                    log.exception("dev API failed on %s %s", method, self.path)
                    status, payload = 500, {"error": f"dev server error: {exc}"}
                data = json.dumps(payload, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _read_body(self) -> Any:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    raise ApiError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
                if length > MAX_BODY_BYTES:
                    raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
                try:
                    return json.loads(self.rfile.read(length) or b"null")
                except ValueError as exc:
                    raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s - %s", self.address_string(), format % args)

        return Handler
