"""A joined run always ends with run:complete: dead executors and shims, dropped sockets,
refused events."""

from __future__ import annotations

import signal

from pool.devserver.server import DevServer
from tests.supervisor.conftest import (
    HELLO_BODY,
    SLOW_BODY,
    events,
    job,
    job_lines,
    lifecycle,
    plan,
    wait_run,
    wait_until,
)


def _start_two_slow_runs(lightning: DevServer) -> list[str]:
    ids = [lightning.enqueue(plan(job(SLOW_BODY))) for _ in range(2)]
    wait_until(lambda: all("step:start" in events(lightning.run(i)) for i in ids),
               "both runs to be running")
    return ids


def test_an_executor_killed_mid_run_crashes_that_run_and_is_replaced(lightning: DevServer,
                                                                      start_pool) -> None:
    pool = start_pool("--size", "2")
    ids = _start_two_slow_runs(lightning)
    victim = pool.executors()[0]
    victim.send_signal(signal.SIGKILL)
    runs = [wait_run(lightning, i) for i in ids]
    assert sorted(r["state"] for r in runs) == ["crashed", "success"], lightning.rejections
    crashed = next(r for r in runs if r["state"] == "crashed")
    assert crashed["error_type"] == "ExitError"
    assert "signal 9" in crashed["error_message"]
    # the open step was closed before the run: Lightning never sees a dangling step
    assert lifecycle(crashed) == ["run:start", "step:start", "step:complete", "run:complete"]
    assert lightning.rejections == []
    pool.wait_size(2, exclude={victim.pid})  # back to size, with a new executor
    after = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert after["state"] == "success"
    assert pool.stop() == 0


def test_a_shim_killed_mid_run_ends_that_run_and_the_pool_keeps_its_size(lightning: DevServer,
                                                                          start_pool) -> None:
    pool = start_pool("--size", "2")
    ids = _start_two_slow_runs(lightning)
    executors = {e.pid for e in pool.executors()}
    pool.shims()[0].send_signal(signal.SIGKILL)
    runs = [wait_run(lightning, i) for i in ids]
    states = sorted(r["state"] for r in runs)
    # the executor reports its shim's death itself: an unexpected exit is a crash
    assert states == ["crashed", "success"], runs
    ended = next(r for r in runs if r["state"] != "success")
    assert ended["error_type"] == "ExitError" and "SIGKILL" in ended["error_message"]
    assert lifecycle(ended)[-1] == "run:complete" and lightning.rejections == []
    assert {e.pid for e in pool.executors()} == executors  # the executors themselves live on
    wait_until(lambda: len(pool.shims()) == 2, "the shim to be replaced")
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert pool.stop() == 0


def test_a_socket_dropped_mid_run_loses_no_event_and_runs_it_once(lightning: DevServer,
                                                                   start_pool) -> None:
    pool = start_pool("--size", "1")
    body = ('fn(state => { console.log("one"); return state; });'
            'fn(state => new Promise(r => setTimeout(() => { console.log("two"); r(state); },'
            ' 300)));')
    run_id = lightning.enqueue(plan(job(body, "a"), job(HELLO_BODY, "b")))
    lightning.drop_socket_on("step:complete", run_id=run_id)
    run = wait_run(lightning, run_id)
    assert run["state"] == "success"
    assert lightning.rejections[0]["reason"].startswith("injected fault") \
        and len(lightning.rejections) == 1, lightning.rejections
    assert lifecycle(run) == ["run:start", "step:start", "step:complete", "step:start",
                              "step:complete", "run:complete"]
    assert job_lines(run) == [["one"], ["two"], ["hello", 42]]
    assert sum(1 for e in run["events"] if e["event"] == "run:start") == 1  # executed once
    assert sum(1 for e in run["events"] if e["event"] == "phx_join") == 2  # rejoined
    assert pool.stop() == 0


def test_a_refused_step_complete_is_sent_again_without_its_dataclip(lightning: DevServer,
                                                                    start_pool) -> None:
    pool = start_pool("--size", "1")
    run_id = lightning.enqueue(plan(job(HELLO_BODY, "a"), job(HELLO_BODY, "b")))
    lightning.reply_error_on("step:complete", {"output_dataclip": ["is invalid"]},
                             run_id=run_id)
    run = wait_run(lightning, run_id)
    assert run["state"] == "success", lightning.rejections
    completes = [e for e in run["events"] if e["event"] == "step:complete"]
    assert [c["reply"]["status"] for c in completes] == ["error", "ok", "ok"]
    assert "output_dataclip" not in completes[1]["payload"]
    assert "output_dataclip_id" not in completes[1]["payload"]
    second_start = [e for e in run["events"] if e["event"] == "step:start"][1]
    assert "input_dataclip_id" not in second_start["payload"]  # it would point at nothing
    assert pool.stop() == 0
