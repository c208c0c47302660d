"""The ``noop`` isolation mode: the events of a trivial successful one-step run, with no Node.

It is the floor for benchmarks (what the executor protocol and the supervisor cost by
themselves) and lets supervisor tests run without Node. The events have the shape and order of a
real run: run-start, step-start, one log line, step-complete (the input state as output),
run-complete.
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
    return [
        {"type": "run-start", "run_id": run_id, "versions": dict(VERSIONS), "time_us": _now_us()},
        {"type": "step-start", "run_id": run_id, "step_id": step_id, "job_id": job_id,
         "input_from": None, "time_us": _now_us()},
        {"type": "log", "run_id": run_id, "step_id": step_id, "level": "info", "source": "JOB",
         "message": ["noop"], "time_us": _now_us()},
        {"type": "step-complete", "run_id": run_id, "step_id": step_id, "job_id": job_id,
         "reason": "success", "error_type": None, "error_message": None, "state": state_json,
         "redacted": False, "duration_ms": 0, "mem": {"job": 0, "system": 0}, "next": [],
         "time_us": _now_us()},
        {"type": "run-complete", "run_id": run_id, "reason": "success", "error_type": None,
         "error_message": None, "final_state": state_json, "redacted": False,
         "time_us": _now_us()},
    ]
