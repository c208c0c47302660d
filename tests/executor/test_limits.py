"""Limits, through the executor protocol with a real shim: time, memory, payload, crashes.

Memory limits are small (128 MB) so the bombs are fast and the test process is never at risk.
"""

from __future__ import annotations

import json
import time

import psutil
import pytest

from tests.executor.conftest import executor, run


@pytest.fixture(scope="module")
def context_executor():
    with executor("context") as handle:
        yield handle


def assert_killed(result, error_type: str) -> None:
    complete = result.complete
    assert complete["reason"] == "kill" and complete["error_type"] == error_type, complete
    # the step that was running is closed first, with the same reason
    step = result.of("step-complete")[-1]
    assert step["reason"] == "kill" and step["error_type"] == error_type
    assert result.events.index(step) < result.events.index(complete)


def test_infinite_loop_times_out_and_the_next_run_succeeds(context_executor):
    old_pid = context_executor.ready["shim_pid"]
    result = run(context_executor, "fn(s => { while (true) {} })", limits={"timeout_ms": 1000})
    assert_killed(result, "TimeoutError")
    assert result.complete["error_message"] == "Workflow failed to return within 1000ms"
    assert [r["cause"] for r in result.recycled] == ["timeout"]
    assert result.recycled[0]["old_shim_pid"] == old_pid
    assert result.recycled[0]["new_shim_pid"] == result.ready["shim_pid"] != old_pid
    assert wait_gone(old_pid)
    assert run(context_executor, "fn(s => ({ data: 'after' }))").complete["reason"] == "success"


def test_never_resolving_promise_times_out(context_executor):
    result = run(context_executor, "fn(s => new Promise(() => {}))", limits={"timeout_ms": 1000})
    assert_killed(result, "TimeoutError")
    assert run(context_executor, "fn(s => s)").complete["reason"] == "success"


def test_heap_bomb_is_an_oom_kill(context_executor):
    me = psutil.Process()
    before = me.memory_info().rss
    result = run(context_executor,
                 "fn(s => { const a = []; while (true) a.push({ x: Math.random(), s: 'y'.repeat(64) }); })")
    assert_killed(result, "OOMError")
    assert result.complete["error_message"] == "Run exceeded maximum memory usage"
    assert [r["cause"] for r in result.recycled] == ["oom"]
    assert me.memory_info().rss - before < 64 * 1024 * 1024  # the test process is unharmed
    assert run(context_executor, "fn(s => s)").complete["reason"] == "success"


def test_buffer_bomb_outside_the_heap_is_caught_by_the_rss_watchdog(context_executor):
    # Buffers live outside V8's heap: only the RSS watchdog sees them
    result = run(context_executor,
                 "fn(s => { const keep = []; while (true) keep.push(Buffer.alloc(8 * 1024 * 1024, 1)); })")
    assert_killed(result, "OOMError")
    assert [r["cause"] for r in result.recycled] == ["oom"]
    assert run(context_executor, "fn(s => s)").complete["reason"] == "success"


def test_output_over_the_payload_limit_is_redacted_and_the_run_succeeds(context_executor):
    result = run(context_executor,
                 "fn(s => ({ data: { big: 'x'.repeat(30 * 1024 * 1024) }, kept: 1 }))",
                 limits={"payload_mb": 10, "memory_mb": 512})
    step = result.of("step-complete")[0]
    assert step["reason"] == "success" and step["redacted"] is True
    state = json.loads(step["state"])
    assert state["data"] == "[REDACTED]" and state["kept"] == 1
    complete = result.complete
    assert complete["reason"] == "success" and complete["redacted"] is True
    assert len(complete["final_state"]) < 1024


def test_log_line_over_the_log_limit_is_replaced_by_a_notice(context_executor):
    result = run(context_executor,
                 "fn(s => { console.log('y'.repeat(2 * 1024 * 1024)); console.log('small'); return s; })",
                 limits={"log_payload_mb": 1})
    assert result.complete["reason"] == "success"
    logs = result.logs()
    assert any("REDACTED" in line and "payload limit" in line for line in logs)
    assert "small" in logs and not any(len(line) > 1024 * 1024 for line in logs)


def test_process_exit_is_a_crash_and_closes_the_open_step(context_executor):
    result = run(context_executor,
                 "fn(s => { setTimeout.constructor('return process')().exit(42); })")
    complete = result.complete
    assert (complete["reason"], complete["error_type"]) == ("crash", "ExitError")
    assert complete["error_message"] == "Process exited with code: 42"
    assert result.of("step-complete")[-1]["reason"] == "crash"
    assert [r["cause"] for r in result.recycled] == ["crash"]
    assert run(context_executor, "fn(s => s)").complete["reason"] == "success"


def test_cancel_kills_the_run_and_the_executor_carries_on(context_executor):
    context_executor.run("run-cancel", _plan("fn(s => new Promise(() => {}))"), {})
    while (message := context_executor.recv(60))["type"] != "step-start":
        pass
    context_executor.cancel("run-cancel")
    while (message := context_executor.recv(60))["type"] != "run-complete":
        pass
    assert message["run_id"] == "run-cancel" and message["reason"] == "kill"
    while context_executor.recv(60)["type"] != "ready":
        pass
    assert run(context_executor, "fn(s => s)").complete["reason"] == "success"


def test_run_asking_for_more_memory_gets_a_fresh_shim(context_executor):
    warm = run(context_executor, "fn(s => s)").ready["shim_pid"]
    result = run(context_executor, "fn(s => ({ data: setTimeout.constructor('return process')().pid }))",
                 limits={"memory_mb": 1024})
    pid = json.loads(result.complete["final_state"])["data"]
    assert result.complete["reason"] == "success" and pid != warm
    assert result.ready["shim_pid"] == warm  # the warm shim stays for the next run


def _plan(expression: str) -> dict:
    from tests.executor.conftest import plan

    return plan(expression)


def test_executor_never_leaves_a_shim_behind():
    with executor("context") as handle:
        shim_pid = handle.ready["shim_pid"]
        handle.run("busy", _plan("fn(s => { while (true) {} })"), {})
        while handle.recv(60)["type"] != "step-start":
            pass
        handle.kill()  # SIGKILL while its shim spins: the shim cannot notice its fd closing
    assert wait_gone(shim_pid)


def wait_gone(pid: int, deadline: float = 30.0) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie waiting for its reaper)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
