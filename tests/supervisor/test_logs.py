"""Log lines: one per event, fields for run id and executor pid, text or JSON, Sentry optional."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest
import sentry_sdk

from pool.logs import LogSetupError, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_lines_carry_fields_on_one_line() -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    log = logging.getLogger("pool.supervisor.arbiter")
    log.info("run complete\nwith reason %s", "success",
             extra={"executor_pid": 4242, "run_id": "r-1", "note": "two words"})
    log.debug("not shown at info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        "info  pool.supervisor.arbiter: run complete\\nwith reason success "
        'run_id=r-1 executor_pid=4242 note="two words"')


def test_json_lines_for_log_shippers() -> None:
    out = io.StringIO()
    setup_logging("warn", "json", stream=out)
    log = logging.getLogger("pool.supervisor")
    log.info("dropped by level")
    log.warning("executor exited", extra={"executor_pid": 7, "run_id": None})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("run failed", extra={"run_id": "r-2"})
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["message"] for e in entries] == ["executor exited", "run failed"]
    assert entries[0] | {"time": "t"} == {"time": "t", "level": "warn",
                                          "logger": "pool.supervisor",
                                          "message": "executor exited", "executor_pid": 7,
                                          "run_id": None}
    assert entries[1]["level"] == "error" and entries[1]["run_id"] == "r-2"
    assert "RuntimeError: boom" in entries[1]["exc"]


@pytest.mark.parametrize(("level", "fmt", "message"), [
    ("verbose", "text", "log level 'verbose' is not one of debug, info, warn, error"),
    ("info", "xml", "log format 'xml' is not one of text, json"),
])
def test_bad_settings_are_clear_errors(level: str, fmt: str, message: str) -> None:
    with pytest.raises(LogSetupError) as err:
        setup_logging(level, fmt)
    assert str(err.value) == message


def test_sentry_dsn_without_the_package_warns_once_and_logging_goes_on(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # as if sentry-sdk were not installed
    out = io.StringIO()
    active = setup_logging("info", "json", sentry_dsn="https://key@127.0.0.1/1",
                           sentry_env="test", stream=out)
    logging.getLogger("pool").error("still logged")
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert active is False
    assert [e["level"] for e in entries] == ["warn", "error"]
    assert "sentry-sdk package is not installed" in entries[0]["message"]


def test_errors_reach_sentry_at_the_dsn(monkeypatch) -> None:
    """A real Sentry client sends an error log line to the DSN's host (a loopback receiver)."""
    received: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dsn = f"http://publickey@127.0.0.1:{server.server_port}/42"
        assert setup_logging("info", "text", sentry_dsn=dsn, sentry_env="ci",
                             stream=io.StringIO()) is True
        logging.getLogger("pool.supervisor").error("run r-1 lost: token expired")
        sentry_sdk.flush(timeout=10)
        payload = b"\n".join(received)
        assert b"run r-1 lost: token expired" in payload
        assert b'"environment":"ci"' in payload.replace(b" ", b"")
    finally:
        sentry_sdk.get_client().close()
        server.shutdown()

