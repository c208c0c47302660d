"""``run:<id>``: the join (run token check) and every run event, validated as Lightning does.

Lightning's replies are reproduced: ``fetch:dataclip`` answers with a binary frame,
``run:start``/``run:complete`` with ``null``, ``step:*`` with ``{"step_id"}``, ``run:log``
with ``{"log_line_id"}``; refusals carry changeset-shaped errors. ``run:batch_logs`` without
``logs`` crashes the channel, as it does in Lightning. Nothing is accepted after
``run:complete``. All state changes happen under the run book's lock.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from pool.devserver import validation as v
from pool.devserver.core import ChannelCrash, Core, Reply
from pool.devserver.phoenix import Message
from pool.devserver.runs import FINAL_STATE_BY_REASON, Run, now_us
from pool.devserver.tokens import TokenRefused

ALREADY_COMPLETED = {"state": ["already in completed state"]}


def join_run(core: Core, msg: Message) -> tuple[Reply, Run | None]:
    """Verify the run token (as Lightning: token first, then the run's existence)."""
    run_id = msg.topic[len("run:"):]
    token = msg.payload.get("token") if isinstance(msg.payload, dict) else None
    try:
        core.tokens.verify(token, run_id)
    except TokenRefused as exc:
        return Reply("error", {"reason": "unauthorized"}, detail=str(exc)), None
    run = core.book.get(run_id)
    if run is None:
        return Reply("error", {"reason": "not_found"}, detail=f"no run {run_id!r}"), None
    with core.book.lock:
        if run.is_final:  # stricter than Lightning's join, which refuses only what follows
            return Reply("error", {"reason": ALREADY_COMPLETED["state"][0]},
                         detail=f"run {run_id} is final ({run.state})"), None
        run.joined = True
    return Reply("ok", {}), run


def handle_run_event(core: Core, run: Run, msg: Message) -> Reply:
    """Apply one run-channel event to the run, or refuse it with Lightning's error."""
    with core.book.lock:
        if run.is_final:
            return Reply("error", ALREADY_COMPLETED)
        handler = _HANDLERS.get(msg.event)
        if handler is None:
            return Reply("error", {"reason": f"unknown event {msg.event!r} on a run channel"})
        if not isinstance(msg.payload, dict):
            return Reply("error", {"payload": ["must be a JSON object"]})
        return handler(core, run, msg.payload)


def _fetch_plan(core: Core, run: Run, payload: dict) -> Reply:
    return Reply("ok", copy.deepcopy(run.plan))


def _fetch_dataclip(core: Core, run: Run, payload: dict) -> Reply:
    dataclip_id = payload.get("id", run.plan.get("dataclip_id"))
    if dataclip_id is None or dataclip_id not in core.book.dataclips:
        return Reply("error", {"reason": "not_found"})
    body = core.book.dataclips[dataclip_id]
    return Reply("ok", {"binary": True}, binary=json.dumps(body).encode())


def _fetch_credential(core: Core, run: Run, payload: dict) -> Reply:
    credential_id = payload.get("id")
    if credential_id is None:
        return Reply("error", {"errors": {"id": [v.BLANK]}})
    if credential_id not in core.book.credentials:
        return Reply("error", {"errors": {"id": ["Credential not found!"]}})
    body = core.book.credentials[credential_id]
    if isinstance(body, dict):  # Lightning drops keys whose value is an empty string
        body = {key: value for key, value in body.items() if value != ""}
    return Reply("ok", copy.deepcopy(body))


def _run_start(core: Core, run: Run, payload: dict) -> Reply:
    if run.state != "claimed":
        return Reply("error", {"state": [f"cannot mark run started: it is {run.state}"]})
    error = v.timestamp_errors(payload, required=False)
    if error:
        return Reply("error", error)
    run.state = "started"
    run.times["started"] = now_us()
    return Reply("ok", None)


def _open_steps(run: Run) -> set[str]:
    return {step_id for step_id, step in run.steps.items() if step["reason"] is None}


def _step_start(core: Core, run: Run, payload: dict) -> Reply:
    errors = v.step_start_errors(payload, run.job_ids, run.steps, core.book.dataclips)
    if errors:
        return Reply("error", errors)
    run.steps[payload["step_id"]] = {
        "job_id": payload["job_id"], "input_dataclip_id": payload.get("input_dataclip_id"),
        "output_dataclip_id": None, "reason": None, "error_type": None, "error_message": None,
        "started": now_us(), "completed": None}
    return Reply("ok", {"step_id": payload["step_id"]})


def _run_log(core: Core, run: Run, payload: dict) -> Reply:
    errors = v.log_line_errors(payload, run.steps)
    if errors:
        return Reply("error", errors)
    return Reply("ok", {"log_line_id": str(uuid.uuid4())})


def _run_batch_logs(core: Core, run: Run, payload: dict) -> Reply:
    if "logs" not in payload:
        raise ChannelCrash("run:batch_logs payload has no 'logs' key "
                           "(Lightning's channel matches no clause and crashes)")
    logs = payload["logs"]
    if not isinstance(logs, list):
        return Reply("error", {"logs": [f"{v.INVALID}: must be a list of log lines"]})
    problems = [{"index": i, "errors": errors} for i, line in enumerate(logs)
                if (errors := v.log_line_errors(line, run.steps))]
    if problems:
        return Reply("error", {"logs": problems})
    return Reply("ok", {})


def _step_complete(core: Core, run: Run, payload: dict) -> Reply:
    errors = v.step_complete_errors(payload, _open_steps(run), run.steps, core.book.dataclips,
                                    run.saves_dataclips)
    if errors:
        return Reply("error", errors)
    step = run.steps[payload["step_id"]]
    dataclip_id = payload.get("output_dataclip_id")
    step.update(reason=payload["reason"], error_type=payload.get("error_type"),
                error_message=payload.get("error_message"), output_dataclip_id=dataclip_id,
                completed=now_us())
    if dataclip_id is not None:
        body = payload.get("output_dataclip")
        # without saved dataclips Lightning records the id with a wiped body
        core.book.dataclips[dataclip_id] = json.loads(body) if body is not None else None
        run.dataclip_ids.append(dataclip_id)
    return Reply("ok", {"step_id": payload["step_id"]})


def _run_complete(core: Core, run: Run, payload: dict) -> Reply:
    if run.state not in ("claimed", "started"):
        return Reply("error", {"state": [f"cannot complete a run that is {run.state}"]})
    errors = v.run_complete_errors(payload, core.book.dataclips)
    if errors:
        return Reply("error", errors)
    run.state = FINAL_STATE_BY_REASON[payload["reason"]]
    run.reason = payload["reason"]
    run.error_type = payload.get("error_type")
    run.error_message = payload.get("error_message")
    run.final_state = payload.get("final_state")
    run.final_dataclip_id = payload.get("final_dataclip_id")
    core.book.finish(run)
    return Reply("ok", None)


_HANDLERS: dict[str, Any] = {
    "fetch:plan": _fetch_plan,
    "fetch:dataclip": _fetch_dataclip,
    "fetch:credential": _fetch_credential,
    "run:start": _run_start,
    "step:start": _step_start,
    "run:log": _run_log,
    "run:batch_logs": _run_batch_logs,
    "step:complete": _step_complete,
    "run:complete": _run_complete,
}
