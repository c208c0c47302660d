"""Lightning unreachable for a while (the socket cut mid-run, reconnects refused): the run keeps
executing, its events are kept and delivered in order after the reconnect and rejoin, once;
the keep is bounded in bytes (WORKER_OUTBOX_CAP_MB) by dropping log lines, oldest first,
counted and logged, never a lifecycle event."""

from __future__ import annotations

import re
from typing import Any

from pool.devserver.server import DevServer
from tests.supervisor.conftest import job, job_lines, lifecycle, plan, wait_run, wait_until

OUTAGE_S = 2.0  # the supervisor's reconnects come 1 s then 2 s after the cut: the 2nd gets in
LIFECYCLE = ["run:start", "step:start", "step:complete", "run:complete"]


def _chatty(lines: int, width: int) -> str:
    """A job that logs ``lines`` numbered lines, a few at a time, then ends."""
    return (f"fn(state => new Promise(resolve => {{ let i = 0; const pad = 'x'.repeat({width});"
            f" const t = setInterval(() => {{ for (let k = 0; k < 10 && i < {lines}; k++, i++)"
            f" console.log('line', i, pad); if (i === {lines}) {{ clearInterval(t);"
            f" resolve(state); }} }}, 10); }}));")


def _numbers(run: dict[str, Any]) -> list[int]:
    return [message[1] for message in job_lines(run)]


def _cut_while_running(lightning: DevServer, body: str) -> tuple[str, dict[str, Any]]:
    """Enqueue a run; Lightning goes away when its step starts and is back OUTAGE_S later."""
    run_id = lightning.enqueue(plan(job(body)))
    lightning.drop_socket_on("step:start", run_id=run_id, refuse_for=OUTAGE_S)
    return run_id, wait_run(lightning, run_id)


def _only_injected_refusals(lightning: DevServer) -> None:
    assert lightning.rejections, "the outage did not happen"
    for refusal in lightning.rejections:
        assert "injected fault" in str(refusal["reason"]), refusal


def test_events_are_kept_through_an_outage_and_delivered_in_order_once(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", env={"WORKER_MESSAGE_TIMEOUT_SECONDS": "1"})
    run_id, run = _cut_while_running(lightning, _chatty(40, 10))
    assert run["state"] == "success", run["error_message"]
    _only_injected_refusals(lightning)
    assert any(r["event"] == "connect" for r in lightning.rejections)  # it stayed down a while
    assert lifecycle(run) == LIFECYCLE  # the step:start cut off was delivered after the rejoin
    assert _numbers(run) == list(range(40))  # every line, in order, once
    joins = [e for e in run["events"] if e["event"] == "phx_join"]
    assert len(joins) == 2  # rejoined with the same token, not executed again
    first_line = next(e for e in run["events"] if e["event"] == "run:log"
                      and e["payload"]["source"] == "JOB")
    # the run did not wait for Lightning: its first line was logged before the rejoin
    assert int(first_line["payload"]["timestamp"]) < joins[1]["time_us"]
    assert pool.stop() == 0


def test_over_the_memory_cap_log_lines_are_dropped_but_the_run_is_still_reported(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", "--outbox-cap-mb", "0.02",
                      env={"WORKER_MESSAGE_TIMEOUT_SECONDS": "1"})
    total = 200  # ~100 kB of log events against a 20 kB cap
    run_id, run = _cut_while_running(lightning, _chatty(total, 300))
    assert run["state"] == "success", run["error_message"]
    _only_injected_refusals(lightning)
    assert lifecycle(run) == LIFECYCLE  # lifecycle events are never dropped
    kept = _numbers(run)
    assert 0 < len(kept) < total
    assert kept == sorted(set(kept))  # in order, none twice
    assert kept[-1] == total - 1  # the oldest lines went first; the last ones are there
    assert f"run {run_id}: more than 0.02 MB of events waiting for Lightning" in pool.output
    found = wait_until(lambda: re.search(rf"run {run_id}: (\d+) log lines were dropped in all",
                                         pool.output), "the total of dropped lines to be logged")
    assert int(found.group(1)) >= total - len(kept)  # engine lines may have gone too
    assert pool.stop() == 0
