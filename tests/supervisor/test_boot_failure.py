"""An executor that cannot boot later in the pool's life (its replacement finds no Node) stops
the supervisor with exit code 3 and the reason — but only after the runs other executors are
running have finished and been reported: no run is lost to it, and none is claimed meanwhile."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil

from pool.devserver.server import DevServer
from tests.supervisor.conftest import (
    DEADLINE,
    HELLO_BODY,
    is_shim,
    job,
    lifecycle,
    plan,
    wait_run,
    wait_until,
)

# keeps its shim's CPU busy for 3 s: tells the busy executor from the idle one
BUSY_BODY = "fn(state => { const end = Date.now() + 3000; while (Date.now() < end) {} return state; });"


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _idle_executor(executors: list[psutil.Process]) -> psutil.Process:
    """The executor whose shim is not running the busy job."""
    def shim_cpu() -> dict[int, float]:
        return {e.pid: sum(_cpu_seconds(s) for s in e.children(recursive=True) if is_shim(s))
                for e in executors}

    before = shim_cpu()
    time.sleep(0.5)
    after = shim_cpu()
    return min(executors, key=lambda e: after[e.pid] - before[e.pid])


def test_a_replacement_that_cannot_boot_lets_running_runs_finish_then_exits_3(
        lightning: DevServer, start_pool, tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.symlink_to(shutil.which("node") or "node")
    pool = start_pool("--size", "2", "--node", str(node))
    executors = pool.wait_size(2)
    running = lightning.enqueue(plan(job(BUSY_BODY)))
    wait_until(lambda: "step:start" in [e["event"] for e in lightning.run(running)["events"]],
               "the run to start")
    victim = _idle_executor(executors)
    node.unlink()  # Node is gone: the executor that replaces the victim cannot boot
    victim.send_signal(signal.SIGKILL)
    wait_until(lambda: "no more claims: 1 runs in progress finish" in pool.output,
               "the boot failure to stop the claims")
    waiting = lightning.enqueue(plan(job(HELLO_BODY)))  # the busy run is still running

    assert pool.proc.wait(DEADLINE) == 3, pool.output[-3000:]
    run = wait_run(lightning, running)
    assert run["state"] == "success", run["error_message"]  # finished and reported first
    assert lifecycle(run) == ["run:start", "step:start", "step:complete", "run:complete"]
    assert lightning.run(waiting)["state"] == "available"  # not claimed after the failure
    assert lightning.rejections == []
    output = pool.output
    assert "Node.js binary not found" in output
    last = output.rstrip().splitlines()[-1]
    assert last.startswith("poolctl: executor boot failed") and str(node) in last, last
    assert not os.path.exists(node)
