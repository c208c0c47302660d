"""A real ``poolctl start --isolation strict`` to attack, with the default sandbox and with none.

Each test in this folder is one attack from issue 12, written as a hostile job author would:
escape the vm first (``setTimeout.constructor('return process')()``), then try the attack for
real and report what it reached in its final state. Against the default sandbox the attack
must fail for the job and the pool must stay healthy; under ``--sandbox none`` the same attack
only reports what it reached (hosts differ: Yama, ptrace scope, ...), printed at the end of the
session.

The pool works on a copy of the adaptor repo, so an attack that succeeds (under ``none``)
damages nothing the other tests use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pool.devserver.server import DevServer
from pool.supervisor.control import default_control_socket, request
from tests.supervisor.conftest import (
    COMMON,
    HELLO_BODY,
    REPO,
    Pool,
    job,
    plan,
    wait_run,
    wait_until,
)

SIZE = 2
TMP_MB = 8  # the sandbox's /tmp and HOME: small, so a disk-fill attack meets it quickly
PIDS = 128
ESCAPE = "const p = setTimeout.constructor('return process')();"
FINDINGS: list[str] = []  # what the attacks reached under --sandbox none


@dataclass
class Target:
    """A running pool under attack, and how to tell whether an attack got through."""

    lightning: DevServer
    pool: Pool
    sandbox: str  # "default" or "none"
    repo: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def sandboxed(self) -> bool:
        return self.sandbox != "none"

    def attack(self, body: str, credential: dict[str, Any] | None = None,
               timeout_s: float = 120) -> dict[str, Any]:
        """Run ``body`` (JS statements after the escape, ending in ``return {...}``) as a job;
        the run as Lightning saw it, with ``report`` = what the job returned (or None)."""
        expression = f"fn(async state => {{ {ESCAPE} {body} }});"
        credentials = None
        extra: dict[str, Any] = {}
        if credential is not None:
            credentials = {"cred-x": credential}
            extra["credential_id"] = "cred-x"
        run_id = self.lightning.enqueue(plan(job(expression, **extra)), credentials=credentials)
        run = wait_run(self.lightning, run_id, deadline=timeout_s)
        final = run.get("final_state") or {}
        run["report"] = final.get("data") if isinstance(final, dict) else None
        return run

    def verdict(self, name: str, reached: bool, detail: Any) -> None:
        """Sandboxed: the attack must have failed. None: say what it reached."""
        if self.sandboxed:
            assert not reached, f"{name} got through the sandbox: {detail}"
        else:
            FINDINGS.append(f"--sandbox none: {name}: {'REACHED' if reached else 'blocked'}"
                            f" ({detail})")

    def assert_healthy(self) -> None:
        """The pool still serves runs at full size, claiming, not drained or rescaled."""
        status = request(self.control_socket, "status")
        assert not status["draining"], status
        assert status["size"] == SIZE, status
        run = wait_run(self.lightning, self.lightning.enqueue(plan(job(HELLO_BODY))))
        assert run["state"] == "success", run.get("error_message")
        wait_until(lambda: len(self.pool.executors()) == SIZE, f"{SIZE} executors")

    @property
    def control_socket(self) -> str:
        return default_control_socket(self.pool.port)


def copy_repo() -> str:
    """A copy of the test adaptor repo other users can read (uid mode's slot uids must)."""
    root = tempfile.mkdtemp(prefix="poolctl-security-")
    os.chmod(root, 0o755)
    repo = os.path.join(root, "repo")
    shutil.copytree(REPO, repo, symlinks=True)
    return repo


def start_target(sandbox: str, repo: str) -> Target:
    lightning = DevServer()
    lightning.__enter__()
    args = ["--isolation", "strict", "--size", str(SIZE), "--sandbox-tmp-mb", str(TMP_MB),
            "--sandbox-pids", str(PIDS), "--prewarm", COMMON]
    env = {"WORKER_REPO_DIR": repo}
    if sandbox == "none":
        env["WORKER_SANDBOX"] = "none"
    pool = Pool(lightning, *args, env=env)
    target = Target(lightning, pool, sandbox, repo)
    try:
        wait_until(lambda: _all_idle(target), "the pool to be ready")
    except AssertionError as exc:
        output = pool.output[-3000:]
        stop_target(target)
        raise AssertionError(f"{exc}:\n{output}") from None
    return target


def _all_idle(target: Target) -> bool:
    if target.pool.proc.poll() is not None:
        raise AssertionError(f"poolctl start exited with {target.pool.proc.returncode}")
    try:
        status = request(target.control_socket, "status")
    except Exception:  # noqa: BLE001 - not listening yet
        return False
    states = [e["state"] for e in status["executors"]]
    return len(states) == SIZE and all(s == "idle" for s in states)


def stop_target(target: Target) -> None:
    try:
        target.pool.stop()
    finally:
        target.pool.close()
        target.lightning.__exit__(None, None, None)


# which sandboxes to attack: both by default; `make test-security-nonroot` runs only the default
SANDBOXES = os.environ.get("POOLCTL_SECURITY_SANDBOXES", "default,none").split(",")


@pytest.fixture(scope="session", params=SANDBOXES)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    repo = copy_repo()
    try:
        t = start_target(request.param, repo)
        try:
            yield t
        finally:
            stop_target(t)
    finally:
        shutil.rmtree(os.path.dirname(repo), ignore_errors=True)


@pytest.fixture
def fresh_target(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A pool of its own, for an attack that would leave a shared one drained (under none)."""
    made: list[tuple[Target, str]] = []

    def start(sandbox: str) -> Target:
        repo = copy_repo()
        try:
            t = start_target(sandbox, repo)
        except BaseException:
            shutil.rmtree(os.path.dirname(repo), ignore_errors=True)
            raise
        made.append((t, repo))
        return t

    yield start
    for t, repo in made:
        stop_target(t)
        shutil.rmtree(os.path.dirname(repo), ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FINDINGS:
        terminalreporter.section("what the same attacks reach with --sandbox none")
        for line in FINDINGS:
            terminalreporter.write_line(line)


