"""The sandbox a pool runs in is said at start-up, in ``poolctl status`` and on /metrics; one that
cannot work is refused with the reason (exit 2), never silently replaced."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import psutil

from pool.supervisor.control import request
from tests.security.conftest import PIDS, SIZE, Target
from tests.supervisor.conftest import (
    DEADLINE,
    REPO,
    ROOT,
    free_port,
    job,
    plan,
    wait_run,
    wait_until,
)


def expected_mode(target: Target) -> str:
    if not target.sandboxed:
        return "none"
    return "uid" if os.geteuid() == 0 else "namespaces"


def test_the_sandbox_is_logged_shown_in_status_and_on_metrics(target: Target) -> None:
    mode = expected_mode(target)
    assert f"sandbox {mode}: " in target.pool.output
    if mode == "none":
        assert "--sandbox none: strict runs each job in a fresh shim but NOT in a sandbox" in (
            target.pool.output)
    assert request(target.control_socket, "status")["sandbox"] == mode
    with urllib.request.urlopen(f"http://127.0.0.1:{target.pool.port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert f'poolctl_sandbox{{mode="{mode}"}} 1.0' in metrics
    result = subprocess.run([sys.executable, str(ROOT / "bin" / "poolctl"), "status",
                             "--port", str(target.pool.port)],
                            capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT)
    assert f"sandbox: {mode}" in result.stdout, result.stdout + result.stderr


def test_an_explicit_sandbox_that_cannot_work_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(WORKER_SECRET="s3cret", WORKER_REPO_DIR=REPO)
    args = ["--sandbox", "uid", "--port", str(free_port()), "--http-host", "127.0.0.1"]
    with tempfile.TemporaryDirectory() as private:
        if os.geteuid() == 0:  # root may use uid, but its slot uids cannot reach a 0700 repo
            os.chmod(private, 0o700)
            repo = os.path.join(private, "repo")
            os.mkdir(repo)
            args += ["--repo-dir", repo]
            why = "Permission denied"
        else:
            why = "needs the pool to run as root"
        result = subprocess.run([sys.executable, str(ROOT / "bin" / "poolctl"), "start", *args],
                                capture_output=True, text=True, timeout=DEADLINE, env=env,
                                cwd=ROOT)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--sandbox uid" in result.stderr and why in result.stderr, result.stderr


def test_shims_run_under_uids_of_their_slot_alternating(target: Target) -> None:
    """Root (uid): while a run executes, its shim and the standby that takes the next run have
    two different uids of the executor's own; namespaces and none: the pool's own uid."""
    body = "fn(state => new Promise(resolve => setTimeout(() => resolve(state), 4000)));"
    runs = [target.lightning.enqueue(plan(job(body))) for _ in range(SIZE)]

    def uids_per_executor() -> dict[int, list[int]] | None:
        seen = {}
        for executor in target.pool.executors():
            with contextlib.suppress(psutil.Error):
                seen[executor.pid] = sorted(p.uids().real for p in
                                            executor.children(recursive=True)
                                            if p.name() == "node")
        return seen if len(seen) == SIZE and all(len(u) == 2 for u in seen.values()) else None

    seen = wait_until(uids_per_executor, "a running shim and a standby in every executor")
    for run_id in runs:
        wait_run(target.lightning, run_id)
    if expected_mode(target) != "uid":
        assert {uid for uids in seen.values() for uid in uids} == {os.geteuid()}, seen
        return
    pairs = [set(uids) for uids in seen.values()]
    assert all(len(pair) == 2 for pair in pairs), seen  # running and standby differ
    assert not set.intersection(*pairs), seen  # no uid shared between executors
    assert all(880000 <= uid <= 889999 for pair in pairs for uid in pair), seen


def soft_limits(pid: int) -> dict[str, int | str]:
    """The soft process, open-file and file-size limits of ``pid`` (``/proc/<pid>/limits``)."""
    names = {"Max processes": "nproc", "Max open files": "nofile", "Max file size": "fsize"}
    out: dict[str, int | str] = {}
    with open(f"/proc/{pid}/limits") as fh:
        for line in fh:
            for label, name in names.items():
                if line.startswith(label):
                    soft = line[len(label):].split()[0]
                    out[name] = int(soft) if soft.isdigit() else soft
    return out


def test_shims_carry_the_sandbox_limits(target: Target) -> None:
    """Sandboxed shims: tasks, open files and file size limited; first in the OOM killer's line
    in every mode (inherited from their executor), the supervisor last; with none, the pool's
    own limits."""
    def in_sandbox(proc: psutil.Process) -> bool:
        """Below a bubblewrap: a shim, not the pool's own unsandboxed Node (the prepared
        shim's check run, the compile-cache build) that an executor may be running now."""
        try:
            return any(parent.name() == "bwrap" for parent in proc.parents())
        except psutil.Error:
            return False

    def is_node(proc: psutil.Process) -> bool:
        try:
            return proc.name() == "node"
        except psutil.Error:  # ended since it was listed (a standby replaced, a cache built)
            return False

    def shims() -> list[psutil.Process] | None:
        found = [p for e in target.pool.executors() for p in e.children(recursive=True)
                 if is_node(p) and (not target.sandboxed or in_sandbox(p))]
        return found if len(found) >= SIZE else None

    def read(shim: psutil.Process) -> tuple[int, dict[str, int | str]] | None:
        """Its OOM score and limits; None if it ended meanwhile (a standby replaced)."""
        try:
            with open(f"/proc/{shim.pid}/oom_score_adj") as fh:
                return int(fh.read()), soft_limits(shim.pid)
        except (OSError, psutil.Error):
            return None

    def readings() -> list[tuple[int, dict[str, int | str]]] | None:
        found = shims()
        read_all = [read(shim) for shim in found or []]
        return read_all if found and all(r is not None for r in read_all) else None

    for oom, limits in wait_until(readings, "a shim per executor, read"):
        assert oom == 1000
        if target.sandboxed:
            assert limits == {"nproc": PIDS, "nofile": 1024, "fsize": 256 * 1024 * 1024}, limits
        else:
            assert limits["nproc"] != PIDS, limits
    with open(f"/proc/{target.pool.proc.pid}/oom_score_adj") as fh:
        assert int(fh.read()) < 1000  # the supervisor is never the OOM killer's first pick


def test_a_job_runs_with_the_default_repo_in_the_default_sandbox(tmp_path) -> None:
    """No repo setting: the default repo works with the default sandbox. For root that is
    ``/var/lib/poolctl/repo``, which the ``uid`` sandbox's slot uids can read (root's home is
    not): /var/lib is a fresh tmpfs in a mount namespace of the test's own, so the machine's is
    untouched. For another user, ``~/.openfn/worker/repo`` in a fresh HOME."""
    wf = tmp_path / "wf.json"
    wf.write_text('{"steps": [{"id": "a", "expression": '
                  '"export default [s => ({ data: { ok: 1 } })];"}]}')
    os.chmod(tmp_path, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["WORKER_ADAPTORS_OFFLINE"] = "true"
    if os.geteuid() == 0:
        script = 'mount -t tmpfs -o mode=0755 tmpfs /var/lib && exec "$0" -m pool.cli execute "$1"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                sys.executable, str(wf)]
    else:
        env["HOME"] = str(tmp_path / "home")
        argv = [sys.executable, "-m", "pool.cli", "execute", str(wf)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"data": {"ok": 1}}
    if os.geteuid() != 0:
        assert os.path.isdir(f"{env['HOME']}/.openfn/worker/repo")  # the default was used
