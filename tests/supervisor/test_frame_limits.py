"""No frame wedges the worker (issue 13, item 1): what is sent is bounded by Lightning's frame
limit, made to fit as ws-worker makes payloads fit, and a frame Lightning closes the socket on
(code 1009) is never sent again: that run ends as an exception and the next runs flow.

Most tests use a dev server with a 1 MB frame limit (``WORKER_MAX_FRAME_BYTES`` to match) so
their states stay small; one uses Lightning's real 11 MB limit and defaults.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator

import pytest

from pool.devserver.server import MAX_FRAME_BYTES, DevServer
from tests.supervisor.conftest import HELLO_BODY, job, job_lines, lifecycle, plan, wait_run

LIMIT = 1_000_000
SMALL_LIMIT_ENV = {"WORKER_MAX_FRAME_BYTES": str(LIMIT)}
DEADLINE = 30.0  # a run here takes a second or two


@pytest.fixture
def lightning(request: pytest.FixtureRequest) -> Iterator[DevServer]:
    with DevServer(max_frame_bytes=getattr(request, "param", LIMIT)) as dev:
        yield dev


def quotes(n: int) -> str:
    """Job code making a state whose ``data`` is ``n`` double quotes: each becomes ``\\"`` in
    the state's JSON and ``\\\\\\"`` once that JSON is a string inside the frame."""
    return f"fn(state => ({{ data: '\"'.repeat({n}), keep: 1 }}));"


def step_completes(run: dict) -> list[dict]:
    return [e for e in run["events"] if e["event"] == "step:complete"]


def test_an_output_and_a_final_state_over_the_frame_limit_are_made_to_fit(
        lightning: DevServer, start_pool) -> None:
    # 700 kB of quotes: a 1.4 MB state (within every payload limit) in a 2.8 MB step:complete
    # frame, and 1.4 MB as run:complete's final_state object: both over the 1 MB frame limit
    pool = start_pool("--size", "1", env=SMALL_LIMIT_ENV)
    run_id = lightning.enqueue(plan(job(quotes(700_000), "a"), job("fn(s => s);", "b")))
    run = wait_run(lightning, run_id, DEADLINE)
    assert run["state"] == "success", lightning.rejections
    assert lightning.rejections == []
    for complete in step_completes(run):  # the step still completes, without its dataclip
        assert complete["payload"]["output_dataclip_error"] == "DATACLIP_TOO_LARGE"
        assert "output_dataclip" not in complete["payload"]
        assert "output_dataclip_id" not in complete["payload"]
    assert any("Dataclip exceeds payload limit" in str(line) for line in
               [e["payload"].get("message") for e in run["events"] if e["event"] == "run:log"])
    done = next(e for e in run["events"] if e["event"] == "run:complete")["payload"]
    assert done["final_state"] == {"data": "[REDACTED]", "keep": 1}  # other keys stay
    assert "final_dataclip_id" not in done  # the leaf's output was withheld
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert pool.stop() == 0


def test_log_batches_are_split_and_a_log_line_over_the_frame_limit_is_redacted(
        lightning: DevServer, start_pool) -> None:
    # the log payload limit raised above the frame limit: the frame limit still holds
    pool = start_pool("--size", "1", env={**SMALL_LIMIT_ENV, "WORKER_BATCH_LOGS": "true",
                                          "WORKER_MAX_LOG_PAYLOAD_MB": "5"})
    body = ("fn(state => { for (let i = 0; i < 6; i++) console.log(String(i).repeat(300000));"
            " console.log('x'.repeat(1500000)); console.log('after'); return state; });")
    run = wait_run(lightning, lightning.enqueue(plan(job(body))), DEADLINE)
    assert run["state"] == "success", lightning.rejections
    assert lightning.rejections == []
    lines = job_lines(run)
    assert [line[0][:1] for line in lines[:6]] == list("012345")
    assert all(len(line[0]) == 300_000 for line in lines[:6])  # every line whole
    assert lines[6] == ["(Log message redacted: exceeds the 0.95mb frame limit)"]
    assert lines[7] == ["after"]
    batches = [e for e in run["events"] if e["event"] == "run:batch_logs"]
    assert len(batches) >= 3  # six 300 kB lines cannot share one 1 MB frame
    assert pool.stop() == 0


def test_a_frame_lightning_closes_the_socket_on_is_never_sent_again(lightning: DevServer,
                                                                    start_pool) -> None:
    # the worker is told of no limit (as if WORKER_MAX_FRAME_BYTES were set too high): the
    # 1.6 MB step:complete reaches the dev server, which closes the socket with 1009
    pool = start_pool("--size", "1", "--graceful-timeout", "5",
                      env={"WORKER_MAX_FRAME_BYTES": "0"})
    run_id = lightning.enqueue(plan(job(quotes(400_000), "a"), job("fn(s => s);", "b")))
    run = wait_run(lightning, run_id, DEADLINE)
    assert run["state"] == "exception"
    assert run["error_type"] == "ExecutionError"
    assert "1009" in run["error_message"] and "step:complete" in run["error_message"]
    # the open step is closed (small, no dataclip), then the run: nothing dangles
    assert lifecycle(run) == ["run:start", "step:start", "step:complete", "run:complete"]
    closing = [e for e in step_completes(run) if (e["reply"] or {}).get("status") == "ok"]
    assert closing[0]["payload"]["reason"] == "exception"
    too_big = [r for r in lightning.rejections if "1009" in str(r["reason"])]
    assert len(too_big) == 1, lightning.rejections  # refused once, never sent again
    # the next runs flow, and SIGTERM stops the pool well within graceful timeout + flush
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    pool.proc.send_signal(signal.SIGTERM)
    try:
        assert pool.proc.wait(20) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"SIGTERM did not stop the pool:\n{pool.output[-3000:]}")


@pytest.mark.parametrize("lightning", [MAX_FRAME_BYTES], indirect=True)
def test_a_9mb_state_of_quotes_at_lightnings_real_limit_and_defaults(lightning: DevServer,
                                                                      start_pool) -> None:
    # the case, at Lightning's 11 MB frame limit with every default: a 9.6 MB state
    # (under the 10 MB payload limit) whose step:complete frame would be 19 MB
    pool = start_pool("--size", "1")
    run_id = lightning.enqueue(plan(job(quotes(4_800_000))))
    run = wait_run(lightning, run_id, DEADLINE)
    assert run["state"] == "success", lightning.rejections
    assert lightning.rejections == []
    assert step_completes(run)[0]["payload"]["output_dataclip_error"] == "DATACLIP_TOO_LARGE"
    done = next(e for e in run["events"] if e["event"] == "run:complete")["payload"]
    assert len(json.dumps(done["final_state"])) > 9_000_000  # 9.6 MB as an object: it fits
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert pool.stop() == 0


def test_a_redacted_final_state_is_flagged_on_the_event_not_inside_the_state(
        lightning: DevServer, start_pool) -> None:
    # over the run's payload limit (1 MB): data becomes "[REDACTED]", the other keys stay, and
    # no "redacted" key is added to the user's state (engine-multi flags the event)
    pool = start_pool("--size", "1")
    body = "fn(state => ({ data: 'x'.repeat(1200000), keep: 1 }));"
    run = wait_run(lightning, lightning.enqueue(plan(job(body), options={"payload_limit_mb": 1})),
                   DEADLINE)
    assert run["state"] == "success", lightning.rejections
    assert step_completes(run)[0]["payload"]["output_dataclip_error"] == "DATACLIP_TOO_LARGE"
    done = next(e for e in run["events"] if e["event"] == "run:complete")["payload"]
    assert done["final_state"] == {"data": "[REDACTED]", "keep": 1}
    assert pool.stop() == 0
