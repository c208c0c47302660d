"""Drive one run on one shim: forward its events, enforce the limits, always end the run.

Whatever happens — the shim finishes, crashes, runs out of memory or time, the run is
cancelled or the executor is told to stop — the supervisor gets exactly one ``run-complete``
for the run, and a step still open gets its ``step-complete`` first with the same reason (as
ws-worker does; its ``state`` is null, as on the shim's own abort path). Only when the supervisor itself is gone is there
nobody to tell.

Outcomes the executor computes (openfn-engine.md §4.2, lightning-protocol.md §9):

- timeout: ``kill``/``TimeoutError`` "Workflow failed to return within <N>ms";
- memory: ``kill``/``OOMError`` "Run exceeded maximum memory usage" — V8's heap limit (exit
  134, "heap out of memory") or the RSS watchdog;
- a SIGKILL we did not send (an operator's kill -9, or the kernel's OOM killer) is a ``crash``,
  as for any other unexpected exit, and its message says it may have been the OOM killer: we
  cannot tell which, and calling an operator's kill an OOM would mislead;
- any other exit: ``crash``/``ExitError`` "Process exited with code: N";
- ``cancel``: ``kill``/``CancelError``; ``stop`` {graceful: false}: ``kill``/``KillError``.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pool.executor import protocol
from pool.executor.config import Limits
from pool.executor.inbox import EOF, MESSAGE, Inbox
from pool.executor.payload import limit_log_message, limit_state_event
from pool.executor.shim import Shim, ShimExited
from pool.executor.watchdog import OOM, TIMEOUT, Watchdog

POLL = 0.05  # seconds between looks at the inbox and the watchdog while the shim is silent
OOM_MESSAGE = "Run exceeded maximum memory usage"
FORWARDED = {protocol.RUN_START, protocol.STEP_START, protocol.LOG, protocol.STEP_COMPLETE,
             protocol.RUN_COMPLETE}


class ShimLostBeforeRun(Exception):
    """The shim exited before it said anything about the run: none of the run's code ran and
    Lightning heard nothing, so the run can go to a fresh shim. No check before the hand-over
    closes this race: a killed Node still tears its threads down for a while, and a shim can be
    killed a microsecond after any check."""

    def __init__(self, exited: ShimExited) -> None:
        super().__init__(f"exit code {exited.returncode}")
        self.exited = exited


@dataclass(frozen=True)
class RunEnd:
    """How a run ended, and why its shim must be replaced (the ``recycled`` cause) if so."""

    reason: str
    error_type: str | None = None
    error_message: str | None = None
    recycle: str | None = None


def now_us() -> int:
    return time.time_ns() // 1000


def send_run_complete(send: Callable[[dict[str, Any]], None], run_id: Any, end: RunEnd) -> None:
    send({"type": protocol.RUN_COMPLETE, "run_id": run_id, "reason": end.reason,
          "error_type": end.error_type, "error_message": end.error_message,
          "final_state": None, "redacted": False, "time_us": now_us()})


class RunDriver:
    def __init__(self, shim: Shim, run_id: str, limits: Limits,
                 send: Callable[[dict[str, Any]], None], inbox: Inbox) -> None:
        self.shim = shim
        self.run_id = run_id
        self.limits = limits
        self.send = send
        self.inbox = inbox
        self.open_step: dict[str, Any] | None = None
        self.stop_requested = False
        self.supervisor_gone = False
        self.heard = False  # the shim said something during this run

    def drive(self, shim_message: dict[str, Any], may_retry: bool = False) -> RunEnd:
        """Run it to its end; with ``may_retry``, ShimLostBeforeRun when the shim exited before
        saying anything (nothing is sent then)."""
        self._drain_idle_output()
        watchdog = Watchdog(self.limits.timeout_ms, self.limits.memory_mb, self.shim.rss_bytes)
        try:
            self.shim.start_run(shim_message)
        except ShimExited as exc:
            return self._exited(exc, may_retry)
        while True:
            try:
                event = self.shim.next_event(min(POLL, watchdog.wait_time()))
            except ShimExited as exc:
                return self._exited(exc, may_retry)
            if event is not None:
                self.heard = True
                end = self._forward(event)
                if end is not None:
                    return end
            end = self._read_inbox()
            if end is not None:
                return self._abort(end)
            verdict = watchdog.check()
            if verdict == TIMEOUT:
                return self._abort(RunEnd(
                    "kill", "TimeoutError",
                    f"Workflow failed to return within {self.limits.timeout_ms}ms", TIMEOUT))
            if verdict == OOM:
                return self._abort(RunEnd("kill", "OOMError", OOM_MESSAGE, OOM))

    # --- shim → supervisor ---------------------------------------------------------------------------
    def _forward(self, event: dict[str, Any]) -> RunEnd | None:
        kind = event.get("type")
        if kind == "output":
            self._send_log(event.get("line", ""), event.get("time_us") or now_us(),
                           "error" if event.get("stream") == "stderr" else "info")
            return None
        if kind not in FORWARDED or event.get("run_id") not in (self.run_id, None):
            print(f"executor: ignoring shim message {kind!r} during run {self.run_id}",
                  file=sys.stderr, flush=True)
            return None
        message = dict(event, run_id=self.run_id)
        if kind == protocol.LOG:
            parts = message.get("message")
            parts = parts if isinstance(parts, list) else [parts]
            message["message"], redacted = limit_log_message(parts, self.limits.log_payload_mb)
            if redacted:
                message["redacted"] = True
        elif kind == protocol.STEP_START:
            self.open_step = {"step_id": event.get("step_id"), "job_id": event.get("job_id"),
                              "started": time.monotonic()}
        elif kind == protocol.STEP_COMPLETE:
            limit_state_event(message, "state", self.limits.payload_mb)
            self.open_step = None
        elif kind == protocol.RUN_COMPLETE:
            limit_state_event(message, "final_state", self.limits.payload_mb)
        self.send(message)
        if kind != protocol.RUN_COMPLETE:
            return None
        # an uncaught error leaves the shim's state suspect (PROTOCOL.md): replace it
        suspect = message.get("reason") == "crash" and message.get("error_type") == "ExecutionError"
        return RunEnd(message.get("reason") or "success", message.get("error_type"),
                      message.get("error_message"), "crash" if suspect else None)

    def _send_log(self, line: str, time_us: int, level: str) -> None:
        parts, redacted = limit_log_message([line], self.limits.log_payload_mb)
        message = {"type": protocol.LOG, "run_id": self.run_id,
                   "step_id": self.open_step["step_id"] if self.open_step else None,
                   "level": level, "source": "ADA", "message": parts, "time_us": time_us}
        if redacted:
            message["redacted"] = True
        self.send(message)

    def _drain_idle_output(self) -> None:
        """What a shim printed while idle is not this run's: it goes to the executor's log."""
        while True:
            try:
                event = self.shim.next_event(0)
            except ShimExited:
                return  # start_run reports it
            if event is None:
                return
            text = event.get("line") if event.get("type") == "output" else event
            print(f"executor: shim {self.shim.pid} (idle): {text}", file=sys.stderr, flush=True)

    # --- supervisor → executor during a run ------------------------------------------------------------
    def _read_inbox(self) -> RunEnd | None:
        while True:
            item = self.inbox.get(timeout=0)
            if item is None:
                return None
            kind, message = item
            if kind == EOF:
                self.supervisor_gone = True
                return RunEnd("kill", "KillError", "The supervisor went away", "crash")
            if kind != MESSAGE:
                continue  # a wake-up: the loop checks readiness after the run
            mtype = message.get("type")
            if mtype == protocol.CANCEL and message.get("run_id") in (self.run_id, None):
                return RunEnd("kill", "CancelError", "Run was cancelled", "cancel")
            if mtype == protocol.STOP:
                self.stop_requested = True
                if not message.get("graceful"):
                    return RunEnd("kill", "KillError",
                                  "The worker stopped before the run finished", "crash")
            elif mtype == protocol.RUN:
                send_run_complete(self.send, message.get("run_id"), RunEnd(
                    "exception", "ExecutionError",
                    f"executor is busy with run {self.run_id}: one run at a time"))
            else:
                print(f"executor: ignoring {mtype!r} during run {self.run_id}",
                      file=sys.stderr, flush=True)

    # --- endings ---------------------------------------------------------------------------------------
    def _exited(self, exc: ShimExited, may_retry: bool) -> RunEnd:
        if may_retry and not self.heard and not self.stop_requested:
            raise ShimLostBeforeRun(exc)
        return self._abort(self._exit_end(exc), kill=False)

    def _exit_end(self, exc: ShimExited) -> RunEnd:
        code = exc.returncode
        if exc.oom:
            return RunEnd("kill", "OOMError", OOM_MESSAGE, OOM)
        if code == -signal.SIGKILL:
            return RunEnd("crash", "ExitError", f"Process exited with code: {code} (killed by "
                          "SIGKILL: an operator, or the kernel's OOM killer)", "crash")
        return RunEnd("crash", "ExitError", f"Process exited with code: {code}", "crash")

    def _abort(self, end: RunEnd, kill: bool = True) -> RunEnd:
        if kill:
            self.shim.kill()
        if self.supervisor_gone:
            return end
        if self.open_step is not None:
            step = self.open_step
            self.send({"type": protocol.STEP_COMPLETE, "run_id": self.run_id,
                       "step_id": step["step_id"], "job_id": step["job_id"],
                       "reason": end.reason, "error_type": end.error_type,
                       "error_message": end.error_message, "state": None, "redacted": False,
                       "duration_ms": int((time.monotonic() - step["started"]) * 1000),
                       "mem": {"job": None, "system": None}, "next": [], "time_us": now_us()})
            self.open_step = None
        send_run_complete(self.send, self.run_id, end)
        return end
