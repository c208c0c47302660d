"""The field rules Lightning applies to run-channel payloads (reference §6.2), as pure checks.

Each check returns an errors map shaped like a Lightning changeset error
(``{"field": ["message"]}``), empty when the payload is acceptable, so the caller can send
it back as the error reply verbatim.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Container, Mapping
from typing import Any

BLANK = "This field can't be blank."
INVALID = "is invalid"
LOG_LEVELS = frozenset({"success", "always", "info", "warn", "error", "debug"})
EXIT_REASONS = frozenset({"success", "fail", "crash", "kill", "exception"})
RUN_COMPLETE_KEYS = frozenset({"reason", "error_type", "error_message", "final_dataclip_id",
                               "final_state", "timestamp"})
MAX_SOURCE_LEN = 8

Errors = dict[str, list[str]]


class CastError(ValueError):
    """A value Lightning's Ecto types would fail to cast."""


def cast_timestamp(value: Any) -> int:
    """Lightning's UnixDateTime: a 16-digit µs string, a 13-digit ms string or an int of ms.

    Returns microseconds since the epoch; anything else (floats, ISO text, 19-digit ns, µs ints)
    raises ``CastError``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1000
    if isinstance(value, str) and value.isascii() and value.isdigit():
        if len(value) == 16:
            return int(value)
        if len(value) == 13:
            return int(value) * 1000
    raise CastError(f"timestamp {value!r} is not a 16-digit µs string, 13-digit ms string or int ms")


def is_uuid(value: Any) -> bool:
    """Ecto.UUID's cast: the canonical 36-character hyphenated form."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def timestamp_errors(payload: Mapping, required: bool) -> Errors:
    """``timestamp`` must cast when present; log lines must have one, lifecycle events may not."""
    if payload.get("timestamp") is None:
        return {"timestamp": [BLANK]} if required else {}
    try:
        cast_timestamp(payload["timestamp"])
    except CastError as exc:
        return {"timestamp": [f"{INVALID}: {exc}"]}
    return {}


def _reason_errors(payload: Mapping) -> Errors:
    reason = payload.get("reason")
    if reason is None:
        return {"reason": [BLANK]}
    if reason not in EXIT_REASONS:
        return {"reason": [f"{INVALID}: {reason!r} is not one of {sorted(EXIT_REASONS)}"]}
    errors: Errors = {}
    if reason == "success":
        for key in ("error_type", "error_message"):
            if payload.get(key) is not None:
                errors[key] = ["must be null when reason is success"]
    return errors


def log_line_errors(line: Any, step_ids: Container[str]) -> Errors:
    """LogLine rules: message a non-null list, level allowed, source ≤ 8, timestamp, step known."""
    if not isinstance(line, dict):
        return {"log": ["must be an object"]}
    errors: Errors = {}
    message = line.get("message")
    if message is None:
        errors["message"] = [BLANK]
    elif not isinstance(message, list):
        errors["message"] = [f"{INVALID}: must be a list of strings or objects"]
    level = line.get("level", "info")
    if level not in LOG_LEVELS:
        errors["level"] = [f"{INVALID}: {level!r} is not one of {sorted(LOG_LEVELS)}"]
    source = line.get("source")
    if source is not None and (not isinstance(source, str) or len(source) > MAX_SOURCE_LEN):
        errors["source"] = [f"should be a string of at most {MAX_SOURCE_LEN} character(s)"]
    errors.update(timestamp_errors(line, required=True))
    step_id = line.get("step_id")
    if step_id is not None and step_id not in step_ids:
        errors["step_id"] = ["does not exist"]
    return errors


def step_start_errors(payload: Mapping, job_ids: Container[str], step_ids: Container[str],
                      dataclip_ids: Container[str]) -> Errors:
    """``step:start``: a fresh UUID step id, a job of the plan, a known input dataclip."""
    errors: Errors = {}
    step_id = payload.get("step_id")
    if step_id is None:
        errors["step_id"] = [BLANK]
    elif not is_uuid(step_id):
        errors["step_id"] = [f"{INVALID}: {step_id!r} is not a UUID"]
    elif step_id in step_ids:
        errors["step_id"] = ["has already been taken"]
    job_id = payload.get("job_id")
    if job_id is None:
        errors["job_id"] = [BLANK]
    elif job_id not in job_ids:
        errors["job_id"] = ["does not exist"]
    input_id = payload.get("input_dataclip_id")
    if input_id is not None and input_id not in dataclip_ids:
        errors["input_dataclip_id"] = ["does not exist"]
    errors.update(timestamp_errors(payload, required=False))
    return errors


def step_complete_errors(payload: Mapping, open_step_ids: Container[str],
                         known_step_ids: Container[str], dataclip_ids: Container[str],
                         saves_dataclips: bool) -> Errors:
    """``step:complete``: a started step, a valid reason, a consistent output dataclip."""
    errors: Errors = {}
    step_id = payload.get("step_id")
    if step_id is None:
        errors["step_id"] = [BLANK]
    elif step_id not in known_step_ids:
        errors["step_id"] = ["not found"]
    elif step_id not in open_step_ids:
        errors["step_id"] = ["already completed"]
    errors.update(_reason_errors(payload))
    body, body_id = payload.get("output_dataclip"), payload.get("output_dataclip_id")
    if body is not None:
        if not isinstance(body, str):
            errors["output_dataclip"] = [f"{INVALID}: must be a JSON string, not an object"]
        else:
            try:
                json.loads(body)
            except ValueError:
                errors["output_dataclip"] = [f"{INVALID}: not valid JSON"]
    if body_id is not None:
        if not is_uuid(body_id):
            errors["output_dataclip_id"] = [f"{INVALID}: {body_id!r} is not a UUID"]
        elif body_id in dataclip_ids:
            errors["output_dataclip_id"] = ["has already been taken"]
    if saves_dataclips and (body is None) != (body_id is None):
        missing = "output_dataclip" if body is None else "output_dataclip_id"
        errors.setdefault(missing, []).append(
            "is required with the other output_dataclip field when dataclips are saved")
    errors.update(timestamp_errors(payload, required=False))
    return errors


def run_complete_errors(payload: Mapping, dataclip_ids: Container[str]) -> Errors:
    """``run:complete``: only the known keys, a valid reason, an existing final dataclip."""
    errors: Errors = {}
    extra = sorted(set(payload) - RUN_COMPLETE_KEYS)
    if extra:
        errors["keys"] = [f"unexpected: {', '.join(extra)}"]
    errors.update(_reason_errors(payload))
    final_id = payload.get("final_dataclip_id")
    if final_id is not None and final_id not in dataclip_ids:
        errors["final_dataclip_id"] = ["does not exist"]
    errors.update(timestamp_errors(payload, required=False))
    return errors
