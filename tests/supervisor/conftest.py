"""Run the real product for the supervisor's tests: ``poolctl start`` as a subprocess against a
DevServer on loopback, with real executors, shims and adaptors (``--isolation context`` for
speed where isolation is not what a test is about; ``POOLCTL_TEST_ISOLATION=strict`` runs the
same tests in strict)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pool.devserver.server import DevServer
from tests.unprivileged import Unprivileged

ROOT = Path(__file__).resolve().parents[2]
REPO = os.environ.get("WORKER_REPO_DIR") or str(ROOT / ".repo")
# context by default, for speed; POOLCTL_TEST_ISOLATION=strict runs the suite in strict
ISOLATION = os.environ.get("POOLCTL_TEST_ISOLATION") or "context"
COMMON = "@openfn/language-common@3.3.4"
HELLO_BODY = 'fn(state => { console.log("hello", 42); return { ...state, data: { n: 1 } }; });'
SLOW_BODY = 'fn(state => new Promise(resolve => setTimeout(() => resolve(state), 1500)));'
DEADLINE = 60.0  # generous (5x and more): a run takes well under a second, a boot ~2 s


def job(body: str, job_id: str = "job-1", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "adaptor": COMMON, "body": body, **extra}


def plan(*jobs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Jobs in a chain: each feeds the next when it succeeds."""
    edges = [{"id": f"e{i}", "source_job_id": a["id"], "target_job_id": b["id"],
              "condition": "on_job_success", "enabled": True}
             for i, (a, b) in enumerate(zip(jobs, jobs[1:], strict=False))]
    return {"jobs": list(jobs), "edges": edges, "triggers": [], **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline}s waiting for {what}")


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    """``(status, body)`` of a GET to the pool's HTTP server on loopback; an error status with
    its body; ``(0, "")`` when nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def is_shim(proc: psutil.Process) -> bool:
    """A shim (not the pool's ``node prepare.mjs``, which an executor also starts)."""
    try:
        # Node itself, not the bubblewrap or setpriv around it (their argv names the script too)
        return proc.name() == "node" and any(arg.endswith("shim.mjs") for arg in proc.cmdline())
    except psutil.Error:
        return False


class Pool:
    """``poolctl start`` running against ``lightning``; its output goes to a file."""

    def __init__(self, lightning: DevServer, *args: str, env: dict[str, str] | None = None,
                 with_lightning_env: bool = True, user: Unprivileged | None = None,
                 port: int | None = None) -> None:
        """``user``: start it as that user, without the power to read other processes' memory
        (tests/unprivileged.py)."""
        self.lightning = lightning
        fd, self.log_path = tempfile.mkstemp(prefix="poolctl-", suffix=".log")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        full_env["WORKER_REPO_DIR"] = REPO
        # a journal of its own, never the machine's default state dir (a test may pass one)
        self._own_state_dir = tempfile.mkdtemp(prefix="poolctl-state-")
        full_env["WORKER_STATE_DIR"] = self._own_state_dir
        if with_lightning_env:
            full_env.update(lightning.worker_env())
        full_env.update(env or {})
        # its own HTTP port (and so its own control socket): pools of concurrent test runs
        # must not meet on the default 2222
        self.port = port or free_port()
        if user is not None:
            full_env = user.env(full_env)
            os.chown(self._own_state_dir, user.uid, user.uid)
        self.proc = subprocess.Popen(
            [user.python if user else sys.executable, str(ROOT / "bin" / "poolctl"), "start",
             "--isolation", ISOLATION,
             "--backoff", "0.05/0.5", "--offline", "--port", str(self.port),
             "--http-host", "127.0.0.1", *args],
            env=full_env, stdout=fd, stderr=subprocess.STDOUT, cwd=ROOT,
            **(user.popen if user is not None else {}))
        os.close(fd)

    @property
    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def executors(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if "pool.executor" in " ".join(c.cmdline())]

    def shims(self) -> list[psutil.Process]:
        # the shim runs in a sandbox (bwrap's children): look below the executor
        return [s for e in self.executors() for s in e.children(recursive=True) if is_shim(s)]

    def wait_size(self, size: int, exclude: set[int] = frozenset()) -> list[psutil.Process]:  # type: ignore[assignment]
        return wait_until(lambda: (len(e := [p for p in self.executors() if p.pid not in exclude])
                                   == size and e),
                          f"{size} executors")

    def stop(self) -> int:
        """SIGTERM, as an operator would: a graceful stop must exit 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"poolctl did not stop on SIGTERM:\n{self.output[-3000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log_path)
        shutil.rmtree(self._own_state_dir, ignore_errors=True)


@pytest.fixture
def lightning() -> Iterator[DevServer]:
    with DevServer() as dev:
        yield dev


@pytest.fixture
def start_pool(lightning: DevServer) -> Iterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def start(*args: str, **kwargs: Any) -> Pool:
        pool = Pool(lightning, *args, **kwargs)
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.close()


def events(run: dict[str, Any], *, ok_only: bool = True) -> list[str]:
    """A run's events as the dev server handled them (answered ok unless ``ok_only=False``);
    the final ``phx_leave`` is left out, as it may land just after the run is final."""
    return [e["event"] for e in run["events"] if e["event"] != "phx_leave"
            and (not ok_only or (e["reply"] or {}).get("status") == "ok")]


def wait_run(lightning: DevServer, run_id: str, deadline: float = DEADLINE) -> dict[str, Any]:
    """The run once final and its ``run:complete`` recorded (the dev server marks the run final
    a moment before it records the event)."""
    lightning.wait_for_run(run_id, deadline)
    return wait_until(lambda: (run := lightning.run(run_id))["events"][-1]["event"] in (
        "run:complete", "phx_leave") and run, f"run {run_id} to be recorded")


def lifecycle(run: dict[str, Any]) -> list[str]:
    return [e for e in events(run) if e.startswith(("run:start", "step:", "run:complete"))]


def job_lines(run: dict[str, Any]) -> list[Any]:
    """The job's own console lines, in order (batched or not)."""
    out = []
    for e in run["events"]:
        if (e["reply"] or {}).get("status") != "ok":
            continue
        lines = e["payload"].get("logs", []) if e["event"] == "run:batch_logs" else (
            [e["payload"]] if e["event"] == "run:log" else [])
        out += [line["message"] for line in lines if line["source"] == "JOB"]
    return out


__all__ = ["COMMON", "DEADLINE", "HELLO_BODY", "SLOW_BODY", "Pool", "events", "job", "job_lines", "lifecycle", "plan",
           "wait_run", "wait_until"]
