"""The ``noop`` isolation mode: the events of a trivial successful one-step run, with no Node.

It is the floor for benchmarks (what the executor protocol and the supervisor cost by
themselves) and lets supervisor tests run without Node. A floor must carry the same events as
the run it is compared with, so the replay sends what the shim sends for a trivial one-step
language-common job: run-start, the runtime's compile and execution log lines (``R/T``), the
step's start, a job log line, the step's complete (the input state as output), run-complete.
Only the Node work is missing.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

VERSIONS = {"node": None, "runtime": "noop", "compiler": "noop"}


def _now_us() -> int:
    return time.time_ns() // 1000


def replay(run_id: str, plan: dict[str, Any], input: Any,
           state_props_to_remove: list[str]) -> list[dict[str, Any]]:
    """The messages a real executor would send for a one-step run that returns its input."""
    steps = (plan.get("workflow") or {}).get("steps") or []
    start = (plan.get("options") or {}).get("start")
    step = next((s for s in steps if s.get("id") == start), steps[0] if steps else {})
    job_id = step.get("id") or "noop"
    step_id = str(uuid.uuid4())
    state = dict(input) if isinstance(input, dict) else {}
    for key in state_props_to_remove:
        state.pop(key, None)
    state_json = json.dumps(state, separators=(",", ":"))

    def log(level: str, text: str, step: str | None = None, source: str = "R/T") -> dict:
        return {"type": "log", "run_id": run_id, "step_id": step, "level": level,
                "source": source, "message": [text], "time_us": _now_us()}

    return [
        {"type": "run-start", "run_id": run_id, "versions": dict(VERSIONS), "time_us": _now_us()},
        log("info", "Compiling all workflow steps..."),
        log("info", "Compilation complete in 0.000s"),
        log("success", "Workflow compilation complete in 0.00s"),
        log("info", f"Executing {run_id}"),
        log("debug", f"Starting execution from step {job_id}"),
        log("info", f"Starting step {job_id}"),
        {"type": "step-start", "run_id": run_id, "step_id": step_id, "job_id": job_id,
         "input_from": None, "time_us": _now_us()},
        log("debug", "[linker] loading module (noop)", step_id),
        log("debug", "[linker] Loading module (noop)", step_id),
        log("info", "Resolved adaptor (noop)", step_id),
        log("debug", "Executing expression (1 operations)", step_id),
        log("debug", "Starting operation 1", step_id),
        log("info", "noop", step_id, source="JOB"),
        log("debug", "Operation 1 complete in 0ms", step_id),
        log("debug", "Expression complete!", step_id),
        log("success", f"{job_id} completed in 0ms", step_id),
        log("debug", "State object serializes to less than 1mb", step_id),
        log("debug", "Cleaning up state. Removing keys: "
                     f"{', '.join(state_props_to_remove)}", step_id),
        log("debug", "Step memory usage: [step 0mb] [system 0mb]", step_id),
        {"type": "step-complete", "run_id": run_id, "step_id": step_id, "job_id": job_id,
         "reason": "success", "error_type": None, "error_message": None, "state": state_json,
         "redacted": False, "duration_ms": 0, "mem": {"job": 0, "system": 0}, "next": [],
         "time_us": _now_us()},
        {"type": "run-complete", "run_id": run_id, "reason": "success", "error_type": None,
         "error_message": None, "final_state": state_json, "redacted": False,
         "time_us": _now_us()},
    ]
