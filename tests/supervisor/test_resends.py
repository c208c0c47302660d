"""Lightning answers late (a reply held past WORKER_MESSAGE_TIMEOUT_SECONDS): a lifecycle event
is sent again with the same ids until a reply comes, and an error reply to a copy means the
first one landed; a log event is not sent again (it would show twice). Either way the run
completes once."""

from __future__ import annotations

from typing import Any

from pool.devserver.server import DevServer
from tests.supervisor.conftest import (
    HELLO_BODY,
    job,
    job_lines,
    lifecycle,
    plan,
    wait_run,
    wait_until,
)

TIMEOUT_S = "1"  # WORKER_MESSAGE_TIMEOUT_SECONDS
HOLD_S = 2.5  # longer than the timeout: at least one copy is sent again
LIFECYCLE = ["run:start", "step:start", "step:complete", "run:complete"]
# how Lightning refuses the copy of an event it already has
DUPLICATE_REFUSALS = ("cannot mark run started", "has already been taken", "already completed",
                      "already in completed state")


def _finished(lightning: DevServer, run_id: str) -> dict[str, Any]:
    """The run once final and left by the worker: every copy it sent is recorded by then."""
    wait_run(lightning, run_id)
    return wait_until(lambda: (run := lightning.run(run_id)) and any(
        e["event"] == "phx_leave" for e in run["events"]) and run, f"run {run_id} to be left")


def _log_lines(run: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every log line Lightning stored for the run (batched or not), as comparable tuples."""
    lines = []
    for e in run["events"]:
        if (e["reply"] or {}).get("status") != "ok":
            continue
        batch = e["payload"].get("logs", []) if e["event"] == "run:batch_logs" else (
            [e["payload"]] if e["event"] == "run:log" else [])
        lines += [(line["source"], repr(line["message"]), line["timestamp"]) for line in batch]
    return lines


def _refusals(lightning: DevServer, run_id: str) -> list[dict[str, Any]]:
    return [r for r in lightning.rejections if r["run_id"] == run_id]


def test_a_late_reply_to_a_lifecycle_event_resends_it_with_the_same_ids(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", env={"WORKER_MESSAGE_TIMEOUT_SECONDS": TIMEOUT_S})
    for event in LIFECYCLE:
        run_id = lightning.enqueue(plan(job(HELLO_BODY)))
        lightning.hold_reply_on(event, HOLD_S, run_id=run_id)
        run = _finished(lightning, run_id)
        where = f"reply to {event} held"
        assert run["state"] == "success", (where, run["error_message"])
        assert lifecycle(run) == LIFECYCLE, where  # each accepted exactly once
        assert job_lines(run) == [["hello", 42]], where
        copies = [e for e in run["events"] if e["event"] == event]
        assert len(copies) >= 2, (where, copies)  # sent again after the timeout ...
        assert all(c["payload"] == copies[0]["payload"] for c in copies), where  # ... same ids
        assert [c["reply"]["status"] for c in copies] == ["ok"] + ["error"] * (len(copies) - 1)
        refusals = _refusals(lightning, run_id)
        assert {r["event"] for r in refusals} == {event}, (where, refusals)
        assert all(any(d in str(r["reason"]) for d in DUPLICATE_REFUSALS) for r in refusals), \
            (where, refusals)
    assert "sending it again" in pool.output
    assert "the first copy landed" in pool.output
    assert pool.stop() == 0


def test_a_late_reply_to_a_log_line_does_not_send_it_twice(lightning: DevServer,
                                                           start_pool) -> None:
    pool = start_pool("--size", "1", env={"WORKER_MESSAGE_TIMEOUT_SECONDS": TIMEOUT_S})
    run_id = lightning.enqueue(plan(job(HELLO_BODY)))
    lightning.hold_reply_on("run:log", HOLD_S, run_id=run_id)
    run = _finished(lightning, run_id)
    assert run["state"] == "success", run["error_message"]
    assert lifecycle(run) == LIFECYCLE
    held = next(e for e in run["events"] if e["event"] == "run:log")
    assert sum(1 for e in run["events"] if e["payload"] == held["payload"]) == 1  # not resent
    lines = _log_lines(run)
    assert len(lines) == len(set(lines)), lines  # no line twice
    assert job_lines(run) == [["hello", 42]]
    # only copies of lifecycle events that queued up behind the held reply may be refused
    for refusal in _refusals(lightning, run_id):
        assert refusal["event"] in LIFECYCLE, refusal
        assert any(d in str(refusal["reason"]) for d in DUPLICATE_REFUSALS), refusal
    assert "not sent again" in pool.output
    assert pool.stop() == 0
