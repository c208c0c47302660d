"""Logging for poolctl's own processes: one line per event, text for people, JSON for shippers.

Events carry their context as fields rather than inside the message, so a log shipper can
filter on them: ``log.info("run complete", extra={"run_id": rid, "executor_pid": pid})``
prints ``... run complete run_id=... executor_pid=...`` in text and adds ``"run_id"`` and
``"executor_pid"`` keys in JSON. Any ``extra`` key becomes a field the same way.

Errors may also go to Sentry (``WORKER_SENTRY_DSN``, ``WORKER_SENTRY_ENV``), as ws-worker
does, through sentry-sdk (a dependency; should an install lack it, one clear warning says so
and logging works without it).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("text", "json")
FIRST_FIELDS = ("run_id", "executor_pid")

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class LogSetupError(ValueError):
    """WORKER_LOG_LEVEL or --log-format has a value poolctl does not know."""


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record, run id and executor pid first."""
    extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    ordered = {k: extra.pop(k) for k in FIRST_FIELDS if k in extra}
    return ordered | dict(sorted(extra.items()))


def _timestamp(record: logging.LogRecord) -> str:
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z")


def _level_name(record: logging.LogRecord) -> str:
    return "warn" if record.levelno == logging.WARNING else record.levelname.lower()


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger>: <message> key=value ...`` on one line (newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", "\\n")
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in record_fields(record).items())
        line = f"{_timestamp(record)} {_level_name(record):<5} {record.name}: {message}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": _timestamp(record), "level": _level_name(record),
                                 "logger": record.name, "message": record.getMessage()}
        entry |= record_fields(record)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def parse_level(level: str) -> int:
    try:
        return LEVELS[str(level).strip().lower()]
    except KeyError:
        raise LogSetupError(f"log level {level!r} is not one of debug, info, warn, "
                            "error") from None


def setup_logging(level: str = "info", fmt: str = "text", sentry_dsn: str | None = None,
                  sentry_env: str | None = None, stream: IO[str] | None = None) -> bool:
    """Configure the root logger once for this process; returns whether Sentry is active.

    Raises LogSetupError for an unknown level or format, before anything is changed.
    """
    numeric = parse_level(level)
    if fmt not in FORMATS:
        raise LogSetupError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return _setup_sentry(sentry_dsn, sentry_env) if sentry_dsn else False


def _setup_sentry(dsn: str, environment: str | None) -> bool:
    """Errors (and error log lines) to Sentry, when the optional sentry-sdk is installed."""
    try:
        import sentry_sdk  # type: ignore[import-not-found]
    except ImportError:
        logging.getLogger(__name__).warning(
            "WORKER_SENTRY_DSN is set but the sentry-sdk package is not installed, so errors "
            "are not sent to Sentry; install it with: pip install sentry-sdk")
        return False
    sentry_sdk.init(dsn=dsn, environment=environment or None)
    return True
