"""Payload limits on outgoing events, enforced in the executor as the last line of defence.

The shim already redacts (PROTOCOL.md), but whatever it misses must not reach the supervisor:
ws-worker's rules apply. An output state over the payload limit keeps its other top-level keys,
its ``data`` becomes ``"[REDACTED]"`` and the event gets ``redacted: true`` (the step still
succeeds). A log line over the log limit is replaced by a notice.
"""

from __future__ import annotations

import json
from typing import Any

MB = 1024 * 1024
REDACTED = "[REDACTED]"
LOG_NOTICE = "[REDACTED: Message length exceeds payload limit]"


def redact_state(state: str | None, limit_mb: float) -> tuple[str | None, bool]:
    """``(state, redacted)``: the state as given when within the limit, else redacted."""
    if state is None or len(state) <= limit_mb * MB / 4 or len(state.encode()) <= limit_mb * MB:
        return state, False
    try:
        value = json.loads(state)
    except ValueError:
        value = None
    if isinstance(value, dict):
        value["data"] = REDACTED
        smaller = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if len(smaller.encode()) <= limit_mb * MB:
            return smaller, True
    # not an object, or too large even without its data: only the notice survives
    return json.dumps({"data": REDACTED}), True


def limit_state_event(message: dict[str, Any], key: str, limit_mb: float) -> dict[str, Any]:
    """Apply the payload limit to ``message[key]`` (``state`` or ``final_state``)."""
    state, redacted = redact_state(message.get(key), limit_mb)
    if redacted:
        message[key] = state
        message["redacted"] = True
    else:
        message.setdefault("redacted", False)
    return message


def limit_log_message(message: list[Any], limit_mb: float) -> tuple[list[Any], bool]:
    """``(message, redacted)``: a log's message list, or the notice when it is over the limit."""
    size = sum(len(part) for part in message if isinstance(part, str))
    if size * 4 <= limit_mb * MB and all(isinstance(p, str | int | float | None) for p in message):
        return message, False
    if len(json.dumps(message, ensure_ascii=False).encode()) <= limit_mb * MB:
        return message, False
    return [LOG_NOTICE], True
