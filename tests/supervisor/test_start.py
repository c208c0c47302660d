"""``poolctl start`` refuses unusable settings in one line, and says where each setting came
from."""

from __future__ import annotations

import base64

from pool.devserver.server import DevServer
from tests.supervisor.conftest import DEADLINE, HELLO_BODY, job, plan, wait_run


def _finish(pool) -> tuple[int, list[str]]:
    code = pool.proc.wait(DEADLINE)
    return code, pool.output.strip().splitlines()


def test_a_missing_secret_is_one_line_and_exit_2(lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", with_lightning_env=False,
                      env={"WORKER_LIGHTNING_SERVICE_URL": lightning.url})
    code, lines = _finish(pool)
    assert code == 2
    assert lines == ["poolctl start: WORKER_SECRET is not set: poolctl start needs Lightning's "
                     "worker secret (WORKER_SECRET_FILE, WORKER_SECRET or --secret-file)"]


def test_an_unreadable_public_key_is_one_line_and_exit_2(start_pool) -> None:
    not_a_key = base64.b64encode(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    pool = start_pool("--size", "1", env={"WORKER_LIGHTNING_PUBLIC_KEY": not_a_key.decode()})
    code, lines = _finish(pool)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("poolctl start: WORKER_LIGHTNING_PUBLIC_KEY is not a PEM public key")


def test_size_and_workloops_together_are_refused(start_pool) -> None:
    pool = start_pool(env={"WORKER_CAPACITY": "3", "WORKER_WORKLOOPS": "manual>*:3"})
    code, lines = _finish(pool)
    assert code == 2 and len(lines) == 1
    assert "exclude each other" in lines[0] and "env:WORKER_CAPACITY" in lines[0]


def test_a_memory_limit_no_shim_can_run_in_is_refused_before_any_executor(start_pool) -> None:
    # it used to boot executors, whose shims then died, and exit 3
    pool = start_pool("--size", "2", env={"WORKER_MAX_RUN_MEMORY_MB": "0"})
    code, lines = _finish(pool)
    assert code == 2
    assert lines[-1] == ("Error: run_memory_mb (env:WORKER_MAX_RUN_MEMORY_MB): must be at least "
                         "32, got 0")
    assert not any("spawned" in line or "Traceback" in line for line in lines)


def test_an_executor_that_cannot_boot_stops_the_pool_with_exit_3(start_pool) -> None:
    pool = start_pool("--size", "2", "--node", "/nonexistent/node")
    code, lines = _finish(pool)
    assert code == 3
    assert lines[-1] == ("poolctl: executor boot failed: Node.js binary not found: "
                         "'/nonexistent/node' (set --node)")
    assert not any("Traceback" in line for line in lines)
    assert sum("spawned" in line for line in lines) == 2  # no respawn loop


def test_start_logs_each_setting_source_and_warns_of_unsupported_variables(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", env={"WORKER_PROFILE": "true", "WORKER_BATCH_LIMIT": "7"})
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert pool.stop() == 0
    out = pool.output
    assert "WORKER_PROFILE is set but poolctl does not support it" in out
    # issue 13: ~40 `setting …` lines at info; now one line of what was set (the rest is debug)
    [line] = [line for line in out.splitlines() if "setting" in line]
    assert " info " in line and "settings not at their defaults: " in line
    assert "size=1 (flag)" in line and "batch_limit=7 (env:WORKER_BATCH_LIMIT)" in line
    assert "secret='****' (env:WORKER_SECRET)" in line
    assert "batch_logs" not in line and "(default)" not in line
    assert lightning.secret not in out
