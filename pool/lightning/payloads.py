"""Executor messages → the run-channel events Lightning expects, exactly as ws-worker sends them.

Lightning casts every field strictly (reference §6.2): timestamps are 16-digit microsecond
strings, step and dataclip ids are UUIDs made by the worker, ``output_dataclip`` is a JSON
*string*. :class:`RunEvents` keeps the per-run bookkeeping of §8 (which dataclip feeds which
step, which outputs were withheld, which steps were leaves) and turns each executor message
(DESIGN, "The executor protocol") into the ordered ``(event, payload)`` pairs to push. It does
no I/O, so the supervisor can drive it from its loop and tests can check it frame by frame.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pool import __version__

log = logging.getLogger(__name__)

RUN_START = "run:start"
STEP_START = "step:start"
RUN_LOG = "run:log"
BATCH_LOGS = "run:batch_logs"
STEP_COMPLETE = "step:complete"
RUN_COMPLETE = "run:complete"

LOG_LEVELS = ("success", "always", "info", "warn", "error", "debug")
ERROR_PATH_REASONS = ("crash", "kill", "exception")
TOO_LARGE = "DATACLIP_TOO_LARGE"
TOO_LARGE_LOG = "Dataclip exceeds payload limit: output will not be sent back to the app."
REDACTED = "[REDACTED]"
UNDELIVERABLE_TYPE = "ExecutionError"  # ws-worker's catch-all for a worker-side exception
MB = 1024 * 1024
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
ENGINE_KEYS = ("worker", "node", "engine", "compiler", "runtime")

Event = tuple[str, dict[str, Any]]


def timestamp(time_us: int) -> str:
    """Lightning's µs timestamp: a 16-digit string (it refuses floats, ints in µs, ISO text)."""
    return str(int(time_us))


def now_us() -> int:
    return time.time_ns() // 1000


def js_number(value: float) -> str:
    """Render a number the way JavaScript's template strings do (``300``, ``0.1``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def surely_within(message: list[Any], limit: float) -> bool:
    """True when ``message`` as JSON cannot be over ``limit`` bytes, judged without encoding
    it (a character takes at most 6 bytes, ``\\u001f``): most lines are short strings, and
    encoding each one only to measure it was a share of the supervisor's CPU per run."""
    bound = 2
    for part in message:
        if isinstance(part, str):
            bound += 6 * len(part) + 3
        elif isinstance(part, int):  # bool is an int too
            bound += part.bit_length() // 3 + 3
        elif part is None or isinstance(part, float):
            bound += 32
        else:
            return False  # objects and arrays: measured
    return bound <= limit


def log_payload(run_id: str, message: list[Any], source: str, level: str, time_us: int,
                step_id: str | None = None) -> dict[str, Any]:
    """One ``run:log`` payload; ``step_id`` only while a step is open."""
    payload: dict[str, Any] = {"run_id": run_id, "message": message, "source": source,
                               "level": level, "timestamp": timestamp(time_us)}
    if step_id:
        payload["step_id"] = step_id
    return payload


def batch_payload(run_id: str, logs: list[dict[str, Any]]) -> dict[str, Any]:
    """``run:batch_logs`` from ``run:log`` payloads: the run id moves up to the batch."""
    return {"run_id": run_id,
            "logs": [{k: v for k, v in line.items() if k != "run_id"} for line in logs]}


def versions_banner(versions: dict[str, Any]) -> str:
    """ws-worker's ``Versions:`` log text: node, worker, then each adaptor, names aligned."""
    rows = [("node.js", str(versions.get("node", "unknown"))),
            ("worker", str(versions.get("worker", __version__)))]
    for name, value in versions.items():
        if name not in ENGINE_KEYS:
            rows.append((name, ", ".join(_as_list(value))))
    width = max(len(name) for name, _ in rows) + 4
    return "Versions:" + "".join(f"\n    ▸ {name.ljust(width)}{value}" for name, value in rows)


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def encoded_size(payload: Any) -> int:
    """UTF-8 bytes of ``payload`` as compact JSON, as it goes into a frame."""
    return len(_COMPACT.encode(payload).encode())


def frame_limit_notice(limit_bytes: int) -> list[str]:
    """What a log line too big for Lightning's frame limit becomes (ws-worker's wording for
    its log payload limit, naming the frame limit instead)."""
    return [f"(Log message redacted: exceeds the {js_number(round(limit_bytes / MB, 2))}mb "
            f"frame limit)"]


def error_complete(reason: str, error_type: str | None, error_message: str | None) -> dict:
    """``run:complete`` of the error path: no timestamp, no final state (as ws-worker)."""
    return {"reason": reason, "error_type": error_type, "error_message": error_message}


def dataclip_error_message(dataclip_id: str, error: Exception | str) -> str:
    """The ``DataClipError`` message, e.g. ``Failed to load dataclip x: [fetch:dataclip] ...``."""
    return f"Failed to load dataclip {dataclip_id}: {error}"


def credential_error_message(failures: dict[str, Exception | str]) -> str:
    """The ``CredentialLoadError`` message: one line per failing credential id."""
    return "\n".join(f"Failed to load credential {cid}: {err}" for cid, err in failures.items())


class RunEvents:
    """Per-run bookkeeping: executor messages in, Lightning ``(event, payload)`` pairs out.

    ``limits`` and ``output_dataclips`` come from :func:`pool.lightning.plan.convert_plan`;
    ``dataclip_id`` is the run's input dataclip (fed to the first steps), or ``None``.
    """

    def __init__(
        self,
        run_id: str,
        limits: dict[str, Any],
        output_dataclips: bool = True,
        dataclip_id: str | None = None,
        thread_id: int | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.run_id = run_id
        self.limits = limits
        self.output_dataclips = output_dataclips
        self.dataclip_id = dataclip_id
        self.thread_id = thread_id
        self.clock = clock
        self.outputs: dict[str, str | None] = {}  # step_id → output dataclip id (None: withheld)
        self.leaves: list[str | None] = []  # output dataclip ids of leaf steps
        self.open_steps: dict[str, dict[str, Any]] = {}  # step_id → its step-start message
        self.completed = False

    # -- the worker's own log lines -------------------------------------------------------------
    def preamble(self) -> list[Event]:
        """``Memory limit`` and ``Timeout`` (RTE), sent before the run starts, as ws-worker."""
        t = self.clock()
        return [
            (RUN_LOG, self._log([f"Memory limit: {js_number(self.limits['memory_mb'])}mb"],
                                "RTE", "info", t)),
            (RUN_LOG, self._log([f"Timeout: {js_number(self.limits['timeout_ms'] / 1000)}s"],
                                "RTE", "info", t)),
        ]

    def _log(self, message: list[Any], source: str, level: str, time_us: int,
             step_id: str | None = None) -> dict[str, Any]:
        return log_payload(self.run_id, message, source, level, time_us, step_id)

    # -- executor messages --------------------------------------------------------------------
    def on_message(self, msg: dict[str, Any]) -> list[Event]:
        """The events one executor message becomes (possibly none), in sending order."""
        handler = {
            "run-start": self._run_start,
            "step-start": self._step_start,
            "log": self._log_line,
            "step-complete": self._step_complete,
            "run-complete": self._run_complete,
        }.get(msg.get("type", ""))
        if handler is None:
            raise ValueError(f"not a run event message: {msg.get('type')!r}")
        if self.completed:
            log.warning("run %s: %s after run-complete ignored", self.run_id, msg.get("type"))
            return []
        return handler(msg)

    def _run_start(self, msg: dict[str, Any]) -> list[Event]:
        versions: dict[str, Any] = {"worker": __version__, "node": "unknown",
                                    "engine": __version__, "compiler": "unknown",
                                    "runtime": "unknown"}
        for name, value in (msg.get("versions") or {}).items():
            versions[name] = str(value) if name in ENGINE_KEYS else _as_list(value)
        started = int(msg.get("time_us") or self.clock())
        # ws-worker dates these two lines 10 ms before the start so they sort first
        before = started - 10_000
        return [
            (RUN_START, {"versions": versions, "timestamp": timestamp(started)}),
            (RUN_LOG, self._log([f"Payload limit: {js_number(self.limits['payload_mb'])}mb"],
                                "RTE", "info", before)),
            (RUN_LOG, self._log([versions_banner(versions)], "VER", "info", before)),
        ]

    def _step_start(self, msg: dict[str, Any]) -> list[Event]:
        step_id = msg["step_id"]
        self.open_steps[step_id] = msg
        payload: dict[str, Any] = {"step_id": step_id, "job_id": msg["job_id"],
                                   "timestamp": timestamp(msg.get("time_us") or self.clock())}
        source = msg.get("input_from")
        input_id = self.dataclip_id if source is None else self.outputs.get(source)
        if input_id:  # omitted when unknown or withheld: Lightning would refuse a dangling id
            payload["input_dataclip_id"] = input_id
        return [(STEP_START, payload)]

    def _log_line(self, msg: dict[str, Any]) -> list[Event]:
        message = msg.get("message")
        if message is None or message == []:
            return []  # an empty console.log() sends nothing, as in ws-worker
        if not isinstance(message, list):
            message = [message]
        limit = float(self.limits.get("log_payload_mb", 1)) * MB
        if not surely_within(message, limit) and \
                len(json.dumps(message, ensure_ascii=False).encode()) > limit:
            message = [f"(Log message redacted: exceeds "
                       f"{js_number(self.limits.get('log_payload_mb', 1))}mb memory limit)"]
        level = msg.get("level") if msg.get("level") in LOG_LEVELS else "info"
        source = str(msg.get("source") or "R/T")[:8]  # Lightning's column holds 8 characters
        step_id = msg.get("step_id")
        if step_id not in self.open_steps:
            step_id = None
        return [(RUN_LOG, self._log(message, source, level,
                                    msg.get("time_us") or self.clock(), step_id))]

    def _step_complete(self, msg: dict[str, Any]) -> list[Event]:
        step_id = msg["step_id"]
        self.open_steps.pop(step_id, None)
        events: list[Event] = []
        payload: dict[str, Any] = {"step_id": step_id, "job_id": msg["job_id"]}
        mem = msg.get("mem")
        # ws-worker reports memory only for a step that succeeded (its engine has no figure
        # for a step that threw), so a failed step's step:complete has no mem
        if isinstance(mem, dict) and (msg.get("reason") or "success") == "success":
            payload["mem"] = {"job": mem.get("job"), "system": mem.get("system")}
        payload["duration"] = int(msg.get("duration_ms") or 0)
        if self.thread_id is not None:
            payload["thread_id"] = self.thread_id
        payload["timestamp"] = timestamp(msg.get("time_us") or self.clock())
        state_text = msg.get("state")
        state = _parse_state(state_text)
        if msg.get("redacted"):  # a field of the event, never a key of the state (engine-multi)
            output_id = None
            events.append((RUN_LOG, self._log([TOO_LARGE_LOG], "R/T", "info",
                                              self.clock(), step_id)))
            payload["output_dataclip_error"] = TOO_LARGE
        else:
            output_id = str(uuid.uuid4())
            payload["output_dataclip_id"] = output_id
            if self.output_dataclips:
                # a step that returned nothing has state null: ws-worker sends `{}` for it
                # (`event.state || {}`), so the run's final dataclip is `{}`, not null
                payload["output_dataclip"] = (state_text if isinstance(state_text, str)
                                              else json.dumps(state_text or {}))
        self.outputs[step_id] = output_id
        payload["reason"] = msg.get("reason") or "success"
        payload["error_type"] = msg.get("error_type")
        payload["error_message"] = msg.get("error_message")
        webhook = state.get("webhookResponse") if isinstance(state, dict) else None
        if isinstance(webhook, dict):
            payload["webhook_response"] = {k: webhook[k] for k in ("status", "body")
                                           if k in webhook}
        if not msg.get("next"):
            self.leaves.append(output_id)
        events.append((STEP_COMPLETE, payload))
        return events

    def _run_complete(self, msg: dict[str, Any]) -> list[Event]:
        self.completed = True
        reason = msg.get("reason") or "crash"
        error_type, error_message = msg.get("error_type"), msg.get("error_message")
        if reason == "success":
            error_type = error_message = None
        events: list[Event] = []
        if reason in ERROR_PATH_REASONS:
            # a step still open when the workflow died is closed with the run's reason first
            for step_id, start in list(self.open_steps.items()):
                events += self._close_open_step(step_id, start, reason, error_type,
                                                error_message)
        t = self.clock()
        events.append((RUN_LOG, self._log([f"Run complete with status: {reason}"],
                                          "R/T", "info", t)))
        if reason != "success":
            events.append((RUN_LOG, self._log([f"{error_type}: {error_message or 'unknown'}"],
                                              "R/T", "info", t)))
        if reason in ERROR_PATH_REASONS:
            events.append((RUN_COMPLETE, error_complete(reason, error_type, error_message)))
            return events
        payload: dict[str, Any] = {"timestamp": timestamp(msg.get("time_us") or t)}
        final = _parse_state(msg.get("final_state"))
        payload["final_state"] = final if final is not None else {}
        payload.update(reason=reason, error_type=error_type, error_message=error_message)
        if len(self.leaves) == 1 and self.leaves[0] is not None:
            payload["final_dataclip_id"] = self.leaves[0]
        events.append((RUN_COMPLETE, payload))
        return events

    # -- making events fit Lightning's frame limit ------------------------------------------------
    def fit(self, event: str, payload: dict[str, Any], limit: int) -> list[Event] | None:
        """What to send instead of an event whose frame would be over ``limit`` bytes (the
        payload's share of the frame), as ws-worker handles a payload over its limit; None when
        the event cannot be made smaller. The caller checks the result fits.

        * ``step:complete``: the output dataclip is withheld (``DATACLIP_TOO_LARGE``, the R/T
          line first, the step still completes and later steps get no input id); a payload
          still too big loses its ``webhook_response`` and a long error message is cut.
        * ``run:complete``: the final state's ``data`` becomes ``"[REDACTED]"`` (its other keys
          stay), or the whole state when that is still too big.
        * a log line: its message becomes a notice naming the frame limit.
        """
        if event == STEP_COMPLETE:
            return self._fit_step_complete(payload, limit)
        if event == RUN_COMPLETE and "final_state" in payload:
            final = payload["final_state"]
            smaller = dict(payload)
            smaller["final_state"] = ({**final, "data": REDACTED} if isinstance(final, dict)
                                      else {"data": REDACTED})
            if encoded_size(smaller) > limit:
                smaller["final_state"] = {"data": REDACTED}
            log.warning("run %s: the final state is over the frame limit: its data is sent as "
                        "%s", self.run_id, REDACTED)
            return [(RUN_COMPLETE, smaller)]
        if event == RUN_LOG:
            return [(RUN_LOG, {**payload, "message": frame_limit_notice(limit)})]
        return None

    def _fit_step_complete(self, payload: dict[str, Any], limit: int) -> list[Event]:
        events: list[Event] = []
        smaller = dict(payload)
        step_id = smaller["step_id"]
        if "output_dataclip_id" in smaller:
            withheld = smaller.pop("output_dataclip_id")
            smaller.pop("output_dataclip", None)
            smaller["output_dataclip_error"] = TOO_LARGE
            self.outputs[step_id] = None
            self.leaves = [None if d == withheld else d for d in self.leaves]
            events.append((RUN_LOG, self._log([TOO_LARGE_LOG], "R/T", "info", self.clock(),
                                              step_id)))
        if encoded_size(smaller) > limit:
            smaller.pop("webhook_response", None)
            message = smaller.get("error_message")
            if isinstance(message, str) and len(message) > 1024:
                smaller["error_message"] = message[:1024] + "… (cut: over the frame limit)"
        events.append((STEP_COMPLETE, smaller))
        return events

    def _close_open_step(self, step_id: str, start: dict[str, Any], reason: str,
                         error_type: str | None, error_message: str | None) -> list[Event]:
        started = int(start.get("time_us") or self.clock())
        return self._step_complete({
            "step_id": step_id, "job_id": start["job_id"], "reason": reason,
            "error_type": error_type, "error_message": error_message, "state": "{}",
            "duration_ms": max(0, (self.clock() - started) // 1000), "next": [],
        })


def ending_events(run_id: str, why: str, open_steps: dict[str, str], now: int) -> list[Event]:
    """A run that cannot be reported as it went ends as an ``exception``: see
    ``closing_events``."""
    return closing_events(run_id, open_steps, "exception", UNDELIVERABLE_TYPE, why, now)


def closing_events(run_id: str, open_steps: dict[str, str], reason: str, error_type: str,
                   message: str, now: int) -> list[Event]:
    """The end of a run the worker can no longer run or report as it went: each step
    Lightning has open (``step_id → job_id``) completed with ``reason`` and no dataclip, the
    final-status lines ws-worker sends, then ``run:complete`` (error path: no final state),
    all small."""
    events: list[Event] = [
        (STEP_COMPLETE, {"step_id": step_id, "job_id": job_id, "reason": reason,
                         "error_type": error_type, "error_message": message, "duration": 0,
                         "timestamp": timestamp(now)})
        for step_id, job_id in open_steps.items()]
    events.append((RUN_LOG, log_payload(run_id, [f"Run complete with status: {reason}"], "R/T",
                                        "info", now)))
    events.append((RUN_LOG, log_payload(run_id, [f"{error_type}: {message}"], "R/T",
                                        "info", now)))
    events.append((RUN_COMPLETE, error_complete(reason, error_type, message)))
    return events


def _parse_state(text: Any) -> Any:
    if text is None or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        log.warning("state is not valid JSON; sent as text")
        return text

