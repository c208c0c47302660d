"""The three reference workflows, end to end: what poolctl sends Lightning matches what the
official worker (@openfn/ws-worker 1.25.0) sent for them, frame by frame.

Compared on the ``worker->lightning`` run-channel frames: non-log events in the same order with
the same fields and value types; log lines with the same fields and types, the job's own
(``JOB``) and the worker's own (``RTE``/``VER``/final status) lines in the same order. Ids,
timestamps, memory figures and the engine's ``R/T`` chatter may differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pool.devserver.server import DevServer
from tests.supervisor.conftest import wait_run

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "lightning" / "transcripts"
CASES = json.loads((TRANSCRIPTS / "cases.json").read_text())
WORKER_SOURCES = ("RTE", "VER")

Event = tuple[str, dict[str, Any]]


def runs_in_frames(frames: list[list[Any]]) -> list[list[Event]]:
    """Each run's worker->lightning events (logs unbatched), in the order the runs started."""
    runs: dict[str, list[Event]] = {}
    for _jr, _ref, topic, event, payload in frames:
        if not topic.startswith("run:") or event == "phx_leave":
            continue
        out = runs.setdefault(topic, [])
        if event == "run:batch_logs":
            out += [("run:log", {"run_id": payload["run_id"], **line})
                    for line in payload["logs"]]
        else:
            out.append((event, payload))
    return list(runs.values())


def transcript_runs(name: str) -> list[list[Event]]:
    lines = (TRANSCRIPTS / name).read_text().splitlines()
    return runs_in_frames([r["frame"] for r in map(json.loads, lines)
                           if r["dir"] == "worker->lightning"])


def shape(payload: dict[str, Any]) -> dict[str, str]:
    """Field → type name; for small fixed objects (versions, mem) their keys too."""
    out = {}
    for key, value in payload.items():
        out[key] = type(value).__name__
        if key in ("versions", "mem"):
            out[key] += str(sorted(value))
    return out


def worker_lines(events: list[Event]) -> list[tuple[str, str]]:
    """The worker's own log lines and the job's, in order (message heads only)."""
    out = []
    for event, payload in events:
        if event != "run:log":
            continue
        head = payload["message"][0] if payload["message"] else ""
        if payload["source"] == "JOB":
            out.append(("JOB", json.dumps(payload["message"])))
        elif payload["source"] in WORKER_SOURCES or str(head).startswith(
                "Run complete with status"):
            out.append((payload["source"], str(head).split(":")[0] + ":"))
    return out


@pytest.mark.parametrize(("flags", "transcript"), [
    ((), "ws-worker-logs.jsonl"),
    (("--batch-logs",), "ws-worker-batch-logs.jsonl"),
], ids=["unbatched", "batched"])
def test_the_reference_workflows_send_what_ws_worker_sent(lightning: DevServer, start_pool,
                                                          flags: tuple[str, ...],
                                                          transcript: str) -> None:
    pool = start_pool("--size", "1", *flags)
    ids = []
    for case in CASES:
        ids.append(lightning.enqueue(case["plan"], credentials=case.get("credentials"),
                                     dataclips=case.get("dataclips")))
        wait_run(lightning, ids[-1])  # one at a time, as the transcripts were made
    assert pool.stop() == 0
    assert [lightning.run(i)["state"] for i in ids] == ["success", "success", "crashed"]
    assert lightning.rejections == []
    ours = runs_in_frames([f["frame"] for f in lightning.frames
                           if f["dir"] == "worker->lightning"])
    theirs = transcript_runs(transcript)
    assert len(ours) == len(theirs) == 3
    for case, mine, official in zip(CASES, ours, theirs, strict=True):
        name = case["name"]
        my_events = [(e, p) for e, p in mine if e != "run:log"]
        their_events = [(e, p) for e, p in official if e != "run:log"]
        assert [e for e, _ in my_events] == [e for e, _ in their_events], name
        for (event, mine_payload), (_, their_payload) in zip(my_events, their_events,
                                                              strict=True):
            assert shape(mine_payload) == shape(their_payload), (name, event)
        their_log_shapes = {tuple(sorted(shape(p).items())) for e, p in official
                            if e == "run:log"}
        for event, payload in mine:
            if event == "run:log":
                assert tuple(sorted(shape(payload).items())) in their_log_shapes, (name, payload)
        assert worker_lines(mine) == worker_lines(official), name
    if flags:  # batched: every log went in a run:batch_logs
        sent = {f["frame"][3] for f in lightning.frames if f["dir"] == "worker->lightning"}
        assert "run:log" not in sent and "run:batch_logs" in sent
