"""Nothing lets the pool grow without bound (issue 13, item 3): a size memory cannot hold is
refused at start and on ``poolctl scale``; a pool that grows spawns a few executors at a time
and keeps claiming, running and obeying signals meanwhile."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pool.devserver.server import DevServer
from pool.supervisor.control import ControlError, default_control_socket, request
from tests.supervisor.conftest import HELLO_BODY, job, plan, wait_run, wait_until


def control(pool, cmd: str, **args):
    path = default_control_socket(pool.port)
    wait_until(lambda: Path(path).exists(), "the control socket", deadline=30)
    return request(path, cmd, **args)


def test_a_size_memory_cannot_hold_is_refused_at_start(lightning: DevServer,
                                                       start_pool) -> None:
    pool = start_pool("--size", "100000")
    try:
        code = pool.proc.wait(20)  # a settings error: at once, before any executor
    except subprocess.TimeoutExpired:
        pytest.fail(f"--size 100000 was not refused:\n{pool.output[-2000:]}")
    assert code == 2
    assert "size 100000 is over the pool's maximum of" in pool.output
    assert "executor 1 spawned" not in pool.output


def test_scale_over_the_maximum_is_refused_and_the_pool_is_unchanged(lightning: DevServer,
                                                                     start_pool) -> None:
    pool = start_pool("--size", "1")
    wait_until(lambda: control(pool, "status")["queue_joined"], "the pool to be up")
    with pytest.raises(ControlError, match="over the pool's maximum"):
        control(pool, "scale", size=1_000_000_000_000)
    status = control(pool, "status")
    assert status["size"] == 1 and len(status["executors"]) == 1
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert pool.stop() == 0


def test_a_growing_pool_boots_a_few_at_a_time_and_serves_runs_and_signals(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", env={"WORKER_MAX_POOL_SIZE": "40"})
    wait_until(lambda: control(pool, "status")["queue_joined"], "the pool to be up")
    assert control(pool, "scale", size=30) == "size 30 (was 1)"
    run_id = lightning.enqueue(plan(job(HELLO_BODY)))
    booting_seen = []
    while lightning.run(run_id)["state"] != "success":  # served while the pool grows
        booting_seen.append(sum(e["state"] == "booting"
                                for e in control(pool, "status")["executors"]))
        assert len(booting_seen) < 2000, "the run was not served while the pool grew"
        time.sleep(0.02)
    assert max(booting_seen) <= max(4, 2 * len(os.sched_getaffinity(0))), booting_seen
    # SIGTERM while executors still boot: nothing runs, so the pool stops at once
    assert any(e["state"] == "booting" for e in control(pool, "status")["executors"])
    pool.proc.send_signal(signal.SIGTERM)
    try:
        assert pool.proc.wait(20) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"SIGTERM did not stop a growing pool:\n{pool.output[-3000:]}")


def test_the_maximum_comes_from_the_cgroups_memory_limit_where_set(tmp_path: Path) -> None:
    from pool.supervisor.sizing import cgroup_memory_limit, footprint_mb

    # a container's limit, not the host's figure: v2 takes the smallest limit up the tree
    group = tmp_path / "kubepods" / "pod1"
    group.mkdir(parents=True)
    (tmp_path / "kubepods" / "memory.max").write_text("max\n")
    (group / "memory.max").write_text(f"{2 * 1024 ** 3}\n")
    assert cgroup_memory_limit(tmp_path, "0::/kubepods/pod1\n") == (
        2 * 1024 ** 3, str(group / "memory.max"))
    assert cgroup_memory_limit(tmp_path, "0::/kubepods\n") is None  # "max": no limit
    v1 = tmp_path / "memory" / "job"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{512 * 1024 ** 2}\n")
    assert cgroup_memory_limit(tmp_path, "4:memory:/job\n")[0] == 512 * 1024 ** 2
    assert footprint_mb("strict") > footprint_mb("context") > footprint_mb("noop")


@pytest.mark.parametrize(("env", "message"), [
    ({"WORKER_MAX_POOL_SIZE": "3", "WORKER_CAPACITY": "4"},
     "size 4 is over the pool's maximum of 3 (--max-size/WORKER_MAX_POOL_SIZE"),
    ({"WORKER_MAX_POOL_SIZE": "0"}, "WORKER_MAX_POOL_SIZE must be at least 1"),
    ({"WORKER_MAX_FRAME_BYTES": "1000"},
     "WORKER_MAX_FRAME_BYTES must be 0 (no limit) or at least 16384"),
])
def test_bad_bounds_are_refused_with_a_clear_message(env: dict[str, str], message: str) -> None:
    from pool.settings import load_settings
    from pool.supervisor.config import StartupError, load_config

    # the bounds are under test, not the sandbox (whose start-up probe needs a usable repo)
    base = {"WORKER_SECRET": "s" * 32, "WORKER_LIGHTNING_SERVICE_URL": "ws://127.0.0.1:1/worker",
            "WORKER_SANDBOX": "none"}
    with pytest.raises(StartupError, match=re.escape(message)) as info:
        load_config(load_settings(env={**base, **env}, command="start"))
    assert info.value.exit_code == 2
    ok = load_config(load_settings(env={**base, "WORKER_MAX_FRAME_BYTES": "0",
                                        "WORKER_MAX_POOL_SIZE": "4", "WORKER_CAPACITY": "4"},
                                   command="start"))
    assert (ok.frame_limit_bytes, ok.max_size.size) == (None, 4)


def test_a_negative_frame_limit_is_refused_by_its_row_of_the_settings_table() -> None:
    from pool.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=re.escape(
            "max_frame_bytes (env:WORKER_MAX_FRAME_BYTES): must be at least 0, got -1")):
        load_settings(env={"WORKER_MAX_FRAME_BYTES": "-1"}, command="start")


def test_cpu_only_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from pool.supervisor import sizing

    monkeypatch.setattr(sizing, "cpu_count", lambda: 2)
    assert sizing.cpu_warning(8) is None
    assert "more than 4 executors per CPU (2 CPUs)" in (sizing.cpu_warning(9) or "")
