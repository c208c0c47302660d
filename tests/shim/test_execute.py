"""`poolctl execute` end to end: a real process, real Node, real adaptors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.shim.conftest import NODE, REPO_DIR

POOLCTL = [sys.executable, "-m", "pool.cli", "execute"]


def execute(workflow: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WORKER_REPO_DIR=REPO_DIR, WORKER_NODE_BINARY=NODE)
    return subprocess.run([*POOLCTL, str(workflow), *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=Path(__file__).resolve().parents[2])


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_success_prints_the_final_state(tmp_path: Path) -> None:
    write(tmp_path / "job.js", "fn(s => ({ ...s, data: { x: s.data.x + 1, "
                               "user: s.configuration.user } }));")
    write(tmp_path / "creds.json", {"user": "demo", "password": "pw"})
    wf = write(tmp_path / "wf.json", {"workflow": {"steps": [
        {"id": "a", "adaptor": "common@3.3.4", "expression": "job.js",
         "configuration": "creds.json", "next": {"b": {"condition": "on_job_success"}}},
        {"id": "b", "adaptors": ["@openfn/language-common@3.3.4"],
         "expression": "fn(s => { console.log('in b'); return s; })"},
    ]}})
    state = write(tmp_path / "in.json", {"data": {"x": 41}})
    proc = execute(wf, "--input", str(state))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"data": {"x": 42, "user": "demo"}}
    assert "INFO JOB in b" in proc.stderr.splitlines()


def test_failure_exits_1_with_the_reason(tmp_path: Path) -> None:
    wf = write(tmp_path / "wf.json", {"steps": [
        {"id": "a", "adaptor": "common@3.3.4", "expression": "fn(() => { throw new Error('nope') })"},
    ]})
    proc = execute(wf)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == "fail: JobError: nope"
    assert json.loads(proc.stdout)["errors"]["a"]["message"] == "nope"


def test_compile_error_exits_1(tmp_path: Path) -> None:
    wf = write(tmp_path / "wf.json", {"steps": [{"id": "a", "expression": "fn(("}]})
    proc = execute(wf)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("crash: CompileError: a: ")
    assert proc.stdout == ""


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    broken = write(tmp_path / "wf.json", "{ not json")
    proc = execute(broken)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("poolctl execute: workflow file")
    assert len(proc.stderr.strip().splitlines()) == 1
    missing = write(tmp_path / "wf2.json", {"steps": [{"id": "a", "expression": "gone.js"}]})
    proc = execute(missing)
    assert proc.returncode == 2
    assert "gone.js" in proc.stderr


def test_an_uninstallable_adaptor_is_an_exception(tmp_path: Path) -> None:
    wf = write(tmp_path / "wf.json", {"steps": [
        {"id": "a", "adaptor": "lodash@4.17.21", "expression": "fn(s => s)"}]})
    proc = execute(wf)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("exception: AutoinstallError: ")


def test_every_isolation_mode_runs_through_an_executor(tmp_path: Path) -> None:
    wf = write(tmp_path / "wf.json", {"steps": [
        {"id": "a", "adaptors": ["@openfn/language-common@3.3.4"],
         "expression": "fn(s => ({ data: { mode: 'node' } }))"}]})
    for mode in ("strict", "context", "cold"):
        proc = execute(wf, "--isolation", mode)
        assert proc.returncode == 0, (mode, proc.stderr)
        assert json.loads(proc.stdout) == {"data": {"mode": "node"}}, mode
    # noop replays a trivial run without Node: proof that the executor, not a bare shim, ran it
    proc = execute(wf, "--isolation", "noop")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) != {"data": {"mode": "node"}}


def test_a_timeout_is_kill_through_the_executor(tmp_path: Path) -> None:
    wf = write(tmp_path / "wf.json", {"steps": [
        {"id": "a", "adaptors": ["@openfn/language-common@3.3.4"],
         "expression": "fn(s => { while (true) {} })"}]})
    proc = execute(wf, "--isolation", "context", "--max-run-duration-seconds", "1")
    assert proc.returncode == 1
    assert "kill: TimeoutError: Workflow failed to return within 1000ms" in proc.stderr


def test_an_adaptor_the_operator_does_not_permit_fails_the_run(tmp_path: Path) -> None:
    wf = write(tmp_path / "wf.json", {"steps": [
        {"id": "a", "adaptor": "@openfn/language-common@3.3.4", "expression": "fn(s => s)"}]})
    proc = execute(wf, "--offline", "--adaptor-allowlist", "@openfn/language-http")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "exception: AutoinstallError: Error installing @openfn/language-common@3.3.4: "
        "@openfn/language-common@3.3.4 is not permitted on this worker "
        "(WORKER_ADAPTOR_ALLOWLIST: @openfn/language-http)")
    allowed = execute(wf, "--offline", "--adaptor-allowlist",
                      "@openfn/language-http,@openfn/language-common@3.3.4")
    assert allowed.returncode == 0, allowed.stderr
