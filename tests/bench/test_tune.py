"""``poolctl tune`` end to end: a real (quick) measurement, its config accepted by a real
``poolctl start --config``, and its bad-input paths each ending in one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil

from pool.bench.pool_process import PoolProcess
from pool.bench.workloads import TRIVIAL
from pool.devserver.server import DevServer
from pool.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
REPO = os.environ.get("WORKER_REPO_DIR") or str(ROOT / ".repo")
DEADLINE_S = 300  # a quick tune takes ~20 s on 2 cores


def poolctl(*args: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["WORKER_REPO_DIR"] = REPO
    cmd = [sys.executable, *python] if python else [sys.executable, "-m", "pool.cli"]
    return subprocess.run([*cmd, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=DEADLINE_S, check=False)


def test_quick_tune_writes_a_config_that_poolctl_start_runs_with(tmp_path: Path) -> None:
    """strict is tuned, context measured beside it and not recommended: nobody said --trusted."""
    config, png = tmp_path / "pool.toml", tmp_path / "tune.png"
    done = poolctl("tune", "--quick", "--offline",
                   "--run-memory-mb", "256", "--memory-budget", "8000",
                   "--write", str(config), "--plot", str(png))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "strict@1 mix" in out and "strict@2 mix" in out
    assert "context@1 mix" in out and "context@2 mix" in out
    # stderr is a pipe here, as in a log: progress in plain lines, no cursor escapes or
    # carriage-return redraws (issue 13)
    assert "\x1b[" not in done.stderr and "\r" not in done.stderr
    assert "tune: measuring context@2 (cell 4 of 4)" in done.stderr
    assert "tune: 4 of 4 cells done" in done.stderr
    assert "isolation: strict, the mode for a shared Lightning" in out
    assert "context would give " in out and "pass --trusted only if every job" in out
    assert "recommended: --size " in out and "--isolation strict" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = tomllib.loads(config.read_text())
    assert written["isolation"] == "strict" and written["run_memory_mb"] == 256
    assert written["size"] in (1, 2)
    settings = load_settings(env={}, config_path=config, command="start")
    assert settings.source("size") == "file" and settings.size == written["size"]

    # the file alone drives a real pool: it boots that many executors and runs a run
    with DevServer(record_frames=False) as server, \
            PoolProcess(server, None, None, REPO, ["--config", str(config), "--offline"],
                        log_dir=str(tmp_path)) as pool:
        run = server.wait_for_run(server.enqueue(TRIVIAL.plan), timeout=60)
        assert run["state"] == "success", pool.tail()
        executors = psutil.Process(pool.pid).children()
        assert len(executors) == written["size"], pool.tail()


def test_a_budget_too_small_for_one_executor_says_so(tmp_path: Path) -> None:
    done = poolctl("tune", "--quick", "--isolation", "context", "--offline",
                   "--memory-budget", "50", "--write", str(tmp_path / "never.toml"))
    assert done.returncode == 1
    assert "memory saturated" in done.stdout
    assert "cannot hold even one executor" in done.stderr
    assert not (tmp_path / "never.toml").exists()


def test_bad_workflow_file_is_one_line_before_any_measuring(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"plan": {"jobs": []}}')
    done = poolctl("tune", "--workflow", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"poolctl tune: workflow file {bad}: plan: 'jobs' must list "
                                   f"at least one job")


def test_plot_without_matplotlib_is_one_clear_line() -> None:
    hide = ("-c", "import sys; sys.modules['matplotlib'] = None; from pool.cli import main; "
                  "main()")
    done = poolctl("tune", "--plot", "x.png", python=hide)
    assert done.returncode == 2
    assert done.stderr.strip() == ("poolctl tune: drawing a chart needs matplotlib: pip install "
                                   "'poolctl[bench]' (or matplotlib>=3.8)")
