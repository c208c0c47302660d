"""Every run-channel payload RunEvents builds, checked against the official worker's frames.

The transcripts hold what @openfn/ws-worker 1.25.0 sent (``worker->lightning``). Each run in
them is replayed here as the executor messages that would have produced it; RunEvents must
then produce the same events, in the same order, with the same fields and types, and the
same values wherever the value is not a fresh id or the worker's clock.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from pool import __version__
from pool.lightning.payloads import (
    TOO_LARGE_LOG,
    RunEvents,
    batch_payload,
    credential_error_message,
    dataclip_error_message,
    surely_within,
    versions_banner,
)

TRANSCRIPTS = Path(__file__).parent / "transcripts"
LIMITS = {"timeout_ms": 300_000, "memory_mb": 500, "payload_mb": 10, "log_payload_mb": 1}
WORKER_LINES = ("Run complete with status:", "Payload limit:", "Versions:", "Memory limit:",
                "Timeout:")
STAMP = re.compile(r"^\d{16}$")


def runs_in(name: str) -> dict[str, list[tuple[str, dict]]]:
    """worker->lightning run-channel events of each run, in order."""
    runs: dict[str, list[tuple[str, dict]]] = {}
    for line in (TRANSCRIPTS / name).read_text().splitlines():
        record = json.loads(line)
        _jr, _ref, topic, event, payload = record["frame"]
        if record["dir"] == "worker->lightning" and topic.startswith("run:") \
                and event not in ("phx_join", "phx_leave") and not event.startswith("fetch:"):
            runs.setdefault(topic[4:], []).append((event, payload))
    return runs


def unbatch(events: list[tuple[str, dict]], run_id: str) -> list[tuple[str, dict]]:
    out = []
    for event, payload in events:
        if event == "run:batch_logs":
            out += [("run:log", {"run_id": run_id, **line}) for line in payload["logs"]]
        else:
            out.append((event, payload))
    return out


def is_worker_line(payload: dict) -> bool:
    text = payload["message"][0]
    return isinstance(text, str) and text.startswith(WORKER_LINES)


def executor_messages(run_id: str, events: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """The executor messages (DESIGN's protocol) behind a transcript run."""
    outputs = {}  # output dataclip id → step id
    next_jobs: dict[str, list[str]] = {}
    for event, payload in events:
        if event == "step:start" and payload.get("input_dataclip_id") in outputs:
            next_jobs.setdefault(outputs[payload["input_dataclip_id"]], []).append(
                payload["job_id"])
        if event == "step:complete" and "output_dataclip_id" in payload:
            outputs[payload["output_dataclip_id"]] = payload["step_id"]
    messages: list[dict[str, Any]] = []
    skip_error_line = False
    for event, p in events:
        t = int(p.get("timestamp", 0))
        if event == "run:start":
            versions = {k: v for k, v in p["versions"].items() if k not in ("worker", "engine")}
            messages.append({"type": "run-start", "run_id": run_id, "versions": versions,
                             "time_us": t})
        elif event == "step:start":
            source = outputs.get(p.get("input_dataclip_id"))
            messages.append({"type": "step-start", "run_id": run_id, "step_id": p["step_id"],
                             "job_id": p["job_id"], "input_from": source, "time_us": t})
        elif event == "run:log":
            if skip_error_line:
                skip_error_line = False
            elif p["message"][0].startswith("Run complete with status:"):
                skip_error_line = not p["message"][0].endswith("success")
            elif not is_worker_line(p):
                messages.append({"type": "log", "run_id": run_id, "step_id": p.get("step_id"),
                                 "level": p["level"], "source": p["source"],
                                 "message": p["message"], "time_us": t})
        elif event == "step:complete":
            message = {"type": "step-complete", "run_id": run_id, "step_id": p["step_id"],
                       "job_id": p["job_id"], "reason": p["reason"],
                       "error_type": p["error_type"], "error_message": p["error_message"],
                       "state": p["output_dataclip"], "duration_ms": p["duration"],
                       "next": next_jobs.get(p["step_id"], []), "time_us": t}
            if "mem" in p:
                message["mem"] = p["mem"]
            messages.append(message)
        elif event == "run:complete":
            final = p.get("final_state")
            messages.append({"type": "run-complete", "run_id": run_id, "reason": p["reason"],
                             "error_type": p["error_type"],
                             "error_message": p["error_message"],
                             "final_state": None if final is None else json.dumps(final),
                             "time_us": t})
    return messages


def same_types(ours: Any, theirs: Any, where: str) -> None:
    assert type(ours) is type(theirs), f"{where}: {type(ours)} vs {type(theirs)}"
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), f"{where}: keys {sorted(ours)} vs {sorted(theirs)}"
        for key in theirs:
            same_types(ours[key], theirs[key], f"{where}.{key}")


CLOCKED = {"timestamp", "output_dataclip_id", "final_dataclip_id", "input_dataclip_id",
           "versions"}


@pytest.mark.parametrize("transcript", ["ws-worker-logs.jsonl", "ws-worker-batch-logs.jsonl"])
def test_replayed_runs_produce_the_official_workers_events(transcript) -> None:
    runs = runs_in(transcript)
    assert len(runs) == 3
    for run_id, raw in runs.items():
        expected = unbatch(raw, run_id)
        first_complete = next((p for e, p in expected if e == "step:complete"), {})
        dataclip = next((p.get("input_dataclip_id") for e, p in expected
                         if e == "step:start"), None)
        ledger = RunEvents(run_id, LIMITS, dataclip_id=dataclip,
                           thread_id=first_complete.get("thread_id"))
        ours = ledger.preamble()
        for message in executor_messages(run_id, expected):
            ours += ledger.on_message(message)
        assert [e for e, _ in ours] == [e for e, _ in expected], run_id
        ids: dict[str, str] = {}  # their output dataclip id → ours
        for i, ((event, mine), (_, theirs)) in enumerate(zip(ours, expected, strict=True)):
            where = f"{run_id} #{i} {event}"
            same_types(mine, theirs, where)
            if event == "run:log" and theirs["source"] == "VER":  # our worker's version
                theirs = {**theirs, "message": [
                    theirs["message"][0].replace("1.25.0", __version__)]}
            for key, value in theirs.items():
                if key not in CLOCKED and key != "thread_id":
                    assert mine[key] == value, f"{where}.{key}"
            if "timestamp" in theirs:
                assert STAMP.match(mine["timestamp"]), where
                after_status = i > 0 and expected[i - 1][0] == "run:log" and \
                    expected[i - 1][1]["message"][0].startswith("Run complete with")
                if event != "run:log" or not (is_worker_line(theirs) or after_status):
                    assert mine["timestamp"] == theirs["timestamp"], where
            if "output_dataclip_id" in theirs:
                uuid.UUID(mine["output_dataclip_id"])
                ids[theirs["output_dataclip_id"]] = mine["output_dataclip_id"]
            if "input_dataclip_id" in theirs:
                wanted = ids.get(theirs["input_dataclip_id"], theirs["input_dataclip_id"])
                assert mine["input_dataclip_id"] == wanted, where
            if "final_dataclip_id" in theirs:
                assert mine["final_dataclip_id"] == ids[theirs["final_dataclip_id"]], where


def test_versions_banner_matches_ws_worker_text() -> None:
    official = ("Versions:\n    ▸ node.js                    20.20.2\n"
                "    ▸ worker                     1.25.0\n"
                "    ▸ @openfn/language-common    3.3.4")
    assert versions_banner({"worker": "1.25.0", "node": "20.20.2", "engine": "1.11.4",
                            "compiler": "x", "runtime": "y",
                            "@openfn/language-common": ["3.3.4"]}) == official


def test_batch_payload_moves_the_run_id_up() -> None:
    line = {"run_id": "r", "message": ["hi"], "source": "JOB", "level": "info",
            "timestamp": "1795609291849591"}
    assert batch_payload("r", [line]) == {"run_id": "r", "logs": [
        {"message": ["hi"], "source": "JOB", "level": "info", "timestamp": "1795609291849591"}]}


def ledger(**kwargs: Any) -> RunEvents:
    return RunEvents("r", {**LIMITS, **kwargs.pop("limits", {})}, clock=lambda: 1795609291000000,
                     **kwargs)


def step_start(step_id: str, job_id: str, input_from: str | None = None) -> dict:
    return {"type": "step-start", "run_id": "r", "step_id": step_id, "job_id": job_id,
            "input_from": input_from, "time_us": 1795609291000001}


def step_complete(step_id: str, job_id: str, state: Any, nxt: list[str],
                  **extra: Any) -> dict:
    return {"type": "step-complete", "run_id": "r", "step_id": step_id, "job_id": job_id,
            "reason": "success", "error_type": None, "error_message": None,
            "state": json.dumps(state), "duration_ms": 3, "mem": {"job": 1, "system": 2},
            "next": nxt, "time_us": 1795609291000002, **extra}


def run_complete(reason: str = "success", final: Any = None, **extra: Any) -> dict:
    return {"type": "run-complete", "run_id": "r", "reason": reason,
            "error_type": extra.pop("error_type", None),
            "error_message": extra.pop("error_message", None),
            "final_state": None if final is None else json.dumps(final),
            "time_us": 1795609291000003}


def payload_of(events: list, name: str) -> dict:
    return next(p for e, p in events if e == name)


def test_too_large_output_is_withheld_and_downstream_input_omitted() -> None:
    runs = ledger(dataclip_id="clip")
    first = runs.on_message(step_start("s1", "a"))
    assert payload_of(first, "step:start")["input_dataclip_id"] == "clip"
    redacted = {"data": "[REDACTED]", "keep": 1}
    events = runs.on_message(step_complete("s1", "a", redacted, ["b"], redacted=True))
    assert events[0][1]["message"] == [TOO_LARGE_LOG] and events[0][1]["source"] == "R/T"
    complete = payload_of(events, "step:complete")
    assert complete["output_dataclip_error"] == "DATACLIP_TOO_LARGE"
    assert "output_dataclip" not in complete and "output_dataclip_id" not in complete
    assert "input_dataclip_id" not in payload_of(runs.on_message(step_start("s2", "b", "s1")),
                                                 "step:start")
    runs.on_message(step_complete("s2", "b", redacted, [], redacted=True))
    done = payload_of(runs.on_message(run_complete(final=redacted)), "run:complete")
    assert "final_dataclip_id" not in done and done["final_state"] == redacted


def test_output_dataclips_false_sends_the_id_but_not_the_body() -> None:
    runs = ledger(output_dataclips=False)
    start = payload_of(runs.on_message(step_start("s1", "a")), "step:start")
    assert "input_dataclip_id" not in start  # no input dataclip: omitted, never null
    complete = payload_of(runs.on_message(step_complete("s1", "a", {"data": 1}, [])),
                          "step:complete")
    uuid.UUID(complete["output_dataclip_id"])
    assert "output_dataclip" not in complete
    done = payload_of(runs.on_message(run_complete(final={"data": 1})), "run:complete")
    assert done["final_dataclip_id"] == complete["output_dataclip_id"]
    assert done["final_state"] == {"data": 1}


def test_two_leaves_send_final_state_without_final_dataclip_id() -> None:
    runs = ledger()
    for step, job in (("s1", "a"), ("s2", "b")):
        runs.on_message(step_start(step, job))
        runs.on_message(step_complete(step, job, {"data": job}, []))
    final = {"a": {"data": "a"}, "b": {"data": "b"}}
    done = payload_of(runs.on_message(run_complete(final=final)), "run:complete")
    assert done["final_state"] == final and "final_dataclip_id" not in done


def test_parallel_branches_each_get_their_own_upstream_output() -> None:
    runs = ledger(dataclip_id="clip")
    runs.on_message(step_start("sa", "a"))
    out_a = payload_of(runs.on_message(step_complete("sa", "a", {}, ["j", "k"])),
                       "step:complete")["output_dataclip_id"]
    runs.on_message(step_start("sj", "j", "sa"))
    out_j = payload_of(runs.on_message(step_complete("sj", "j", {}, ["x"])),
                       "step:complete")["output_dataclip_id"]
    start_k = payload_of(runs.on_message(step_start("sk", "k", "sa")), "step:start")
    start_x = payload_of(runs.on_message(step_start("sx", "x", "sj")), "step:start")
    assert start_k["input_dataclip_id"] == out_a
    assert start_x["input_dataclip_id"] == out_j


def test_crash_closes_the_open_step_then_reports_the_error_path() -> None:
    runs = ledger()
    runs.on_message(step_start("s1", "a"))
    events = runs.on_message(run_complete("kill", error_type="TimeoutError",
                                          error_message="Workflow failed to return within 100ms"))
    assert [e for e, _ in events] == ["step:complete", "run:log", "run:log", "run:complete"]
    closed = events[0][1]
    assert closed["step_id"] == "s1" and closed["reason"] == "kill"
    assert closed["error_type"] == "TimeoutError"
    assert [p["message"] for _, p in events[1:3]] == [
        ["Run complete with status: kill"],
        ["TimeoutError: Workflow failed to return within 100ms"]]
    assert events[3][1] == {"reason": "kill", "error_type": "TimeoutError",
                            "error_message": "Workflow failed to return within 100ms"}
    assert runs.on_message({"type": "log", "message": ["late"]}) == []


def test_success_never_carries_error_fields() -> None:
    runs = ledger()
    done = payload_of(runs.on_message(run_complete("success", final={}, error_type="X",
                                                   error_message="y")), "run:complete")
    assert done["error_type"] is None and done["error_message"] is None


def test_oversized_empty_and_odd_log_lines() -> None:
    runs = ledger(limits={"log_payload_mb": 0.0001})  # ~104 bytes
    runs.on_message(step_start("s1", "a"))
    big = runs.on_message({"type": "log", "step_id": "s1", "level": "info", "source": "JOB",
                           "message": ["x" * 200], "time_us": 1795609291000005})
    assert big[0][1]["message"] == ["(Log message redacted: exceeds 0.0001mb memory limit)"]
    assert big[0][1]["step_id"] == "s1"
    assert runs.on_message({"type": "log", "message": [], "level": "info"}) == []
    odd = runs.on_message({"type": "log", "step_id": "gone", "level": "trace",
                           "source": "VERYLONGSOURCE", "message": "text", "time_us": 1})
    payload = odd[0][1]
    assert payload["level"] == "info" and payload["source"] == "VERYLONG"
    assert payload["message"] == ["text"] and "step_id" not in payload


def test_preamble_and_start_lines_have_ws_workers_texts() -> None:
    runs = ledger(limits={"timeout_ms": 100, "payload_mb": 0.5})
    assert [p["message"] for _, p in runs.preamble()] == [["Memory limit: 500mb"],
                                                          ["Timeout: 0.1s"]]
    events = runs.on_message({"type": "run-start", "versions": {
        "node": "20.1.0", "runtime": "1.9.5", "compiler": "0.1.0",
        "@openfn/language-http": "7.2.10"}, "time_us": 1795609291022013})
    assert events[0] == ("run:start", {"versions": {
        "worker": events[0][1]["versions"]["worker"], "node": "20.1.0",
        "engine": events[0][1]["versions"]["engine"], "compiler": "0.1.0", "runtime": "1.9.5",
        "@openfn/language-http": ["7.2.10"]}, "timestamp": "1795609291022013"})
    assert events[1][1]["message"] == ["Payload limit: 0.5mb"]
    assert events[1][1]["timestamp"] == "1795609291012013"
    assert events[2][1]["source"] == "VER"


def test_webhook_response_is_passed_on() -> None:
    runs = ledger()
    runs.on_message(step_start("s1", "a"))
    state = {"data": {}, "webhookResponse": {"status": 201, "body": {"ok": True}, "x": 1}}
    complete = payload_of(runs.on_message(step_complete("s1", "a", state, [])), "step:complete")
    assert complete["webhook_response"] == {"status": 201, "body": {"ok": True}}


def test_fetch_failure_messages() -> None:
    assert dataclip_error_message("xyz", "[fetch:dataclip] not_found") == \
        "Failed to load dataclip xyz: [fetch:dataclip] not_found"
    assert credential_error_message({
        "abc": '[fetch:credential] {"errors":{"id":["Credential not found!"]}}',
        "%TIMEOUT%": "[fetch:credential] timeout",
    }) == ('Failed to load credential abc: [fetch:credential] '
           '{"errors":{"id":["Credential not found!"]}}\n'
           "Failed to load credential %TIMEOUT%: [fetch:credential] timeout")


def test_the_cheap_log_size_bound_never_lets_an_oversized_line_through() -> None:
    """The bound that spares encoding short lines must never be below the real size."""
    samples = [["\x01" * 1000], ["é" * 1000, 2**200, -(2**70), 1.5e308, None, True],
               ['"\\' * 500], [""], []]
    for message in samples:
        size = len(json.dumps(message, ensure_ascii=False).encode())
        assert not surely_within(message, size - 1), message
    assert surely_within(["hello"], 1024 * 1024)
    assert not surely_within([{"a": 1}], 1024 * 1024)  # objects are measured, not guessed


def test_a_state_with_its_own_redacted_key_is_sent_whole() -> None:
    # the flag is a field of the event (engine-multi); a user's key of that name is just data
    runs = ledger()
    runs.on_message(step_start("s1", "a"))
    state = {"data": "[REDACTED]", "redacted": True}
    complete = payload_of(runs.on_message(step_complete("s1", "a", state, [])), "step:complete")
    assert json.loads(complete["output_dataclip"]) == state
    assert "output_dataclip_error" not in complete
