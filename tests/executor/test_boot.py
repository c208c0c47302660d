"""Booting an executor: the handshake, boot failures (exit 3 and a reason), the noop replay."""

from __future__ import annotations

import os

import pytest

from pool.executor.handle import ExecutorBootError, ExecutorHandle
from tests.executor.conftest import DEADLINE, executor, init, plan, run


def boot_failure(message: dict) -> tuple[str, int | None]:
    handle = ExecutorHandle.spawn(message)
    try:
        with pytest.raises(ExecutorBootError) as info:
            handle.wait_ready(DEADLINE)
        return str(info.value), handle.wait(DEADLINE)
    finally:
        handle.close()


def test_missing_node_binary_is_a_boot_failure_with_its_reason():
    reason, code = boot_failure(init("context", node="/nonexistent/node-20"))
    assert code == 3
    assert "/nonexistent/node-20" in reason and "not found" in reason


def test_repo_path_that_is_a_file_is_a_boot_failure(tmp_path):
    not_a_dir = tmp_path / "repo"
    not_a_dir.write_text("x")
    reason, code = boot_failure(init("strict", repo_dir=str(not_a_dir)))
    assert code == 3
    assert str(not_a_dir) in reason


def test_bad_init_names_the_field():
    reason, code = boot_failure(init("sandboxed"))
    assert code == 3
    assert "isolation" in reason and "sandboxed" in reason


def test_boot_failure_reason_is_one_line_on_stderr_too():
    handle = ExecutorHandle.spawn(init("cold", node="/nonexistent/node-20"))
    try:
        assert handle.wait(DEADLINE) == 3
        handle._drain.join(DEADLINE)
        lines = [line for line in handle.output_tail if line.strip()]
        assert len(lines) == 1 and "boot failed" in lines[0] and "/nonexistent/node-20" in lines[0]
    finally:
        handle.close()


def test_noop_replays_a_successful_one_step_run_without_node():
    with executor("noop", node="/nonexistent/node") as handle:
        assert handle.ready["isolation"] == "noop" and handle.ready["shim_pid"] is None
        result = run(handle, "fn(s => s)", input={"data": {"n": 1}, "configuration": {"pw": "x"}})
        kinds = [e["type"] for e in result.events if e["type"] != "log"]
        assert kinds == ["run-start", "step-start", "step-complete", "run-complete"]
        # the same log traffic as a trivial real run: the runtime's lines and one job line
        logs = result.of("log")
        assert len(logs) >= 15 and [e["source"] for e in logs].count("JOB") == 1
        step = result.of("step-complete")[0]
        assert step["job_id"] == "job-0" and step["reason"] == "success" and step["next"] == []
        assert step["step_id"] == result.of("step-start")[0]["step_id"]
        assert result.complete["reason"] == "success"
        assert result.complete["final_state"] == '{"data":{"n":1}}'  # configuration removed
        assert result.ready is not None


def test_ready_reports_versions_and_warm_adaptors():
    with executor("context") as handle:
        ready = handle.ready
        assert ready["pid"] == handle.pid and ready["shim_pid"] not in (None, handle.pid)
        assert ready["node"] and ready["runtime"] and ready["isolation"] == "context"
        assert ready["warm_adaptors"] == ["@openfn/language-common@3.3.4"]


def test_bad_run_messages_get_a_run_complete_and_the_executor_carries_on():
    with executor("noop") as handle:
        handle.send({"type": "run", "run_id": "r-bad", "plan": {"workflow": {}}})
        message = handle.recv(DEADLINE)
        assert message["type"] == "run-complete" and message["run_id"] == "r-bad"
        assert message["reason"] == "exception" and "steps" in message["error_message"]
        assert handle.recv(DEADLINE)["type"] == "ready"
        handle.run("r-limits", plan("fn(s => s)"), {}, {"timeout_ms": -5})
        message = handle.recv(DEADLINE)
        assert message["reason"] == "exception" and "timeout_ms" in message["error_message"]
        assert handle.recv(DEADLINE)["type"] == "ready"
        assert run(handle, "fn(s => s)").complete["reason"] == "success"


def test_stop_exits_zero():
    with executor("noop") as handle:
        handle.stop(graceful=True)
        assert handle.wait(DEADLINE) == 0


def test_executor_exits_when_the_supervisor_socket_closes():
    with executor("context") as handle:
        shim_pid = handle.ready["shim_pid"]
        handle.sock.close()
        assert handle.wait(DEADLINE) == 0
        with pytest.raises(ProcessLookupError):
            for _ in range(int(DEADLINE * 10)):  # the shim follows its executor
                os.kill(shim_pid, 0)
                import time

                time.sleep(0.1)
