"""The worker secret out of reach of the pool's own uid: not in /proc/<pid>/environ or cmdline
after start, supervisor and executors not dumpable (their memory unreadable by a process of the
same uid), tried as a job that escaped its vm would: from another process of that uid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil

from pool.devserver.server import DevServer
from pool.lightning.tokens import generate_worker_keys
from tests.supervisor.conftest import (
    HELLO_BODY,
    SLOW_BODY,
    events,
    job,
    plan,
    wait_run,
    wait_until,
)
from tests.supervisor.test_lifecycle import status
from tests.unprivileged import unprivileged

ATTACK = """
import json, sys
out = {}
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as fh:
            fh.read(4096) if not path.endswith("/mem") else fh.seek(0)
        out[path] = "read"
    except OSError as exc:
        out[path] = type(exc).__name__
print(json.dumps(out))
"""


def attack(*paths: str) -> dict[str, str]:
    """Try to open (and read) each path from a fresh process of the pool's uid."""
    user = unprivileged()
    done = subprocess.run([user.python, "-c", ATTACK, *paths], capture_output=True,
                          text=True, timeout=30, check=True, env=user.env(os.environ),
                          **user.popen)
    return json.loads(done.stdout)


def test_a_secret_from_the_environment_leaves_the_supervisors_environ(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1")
    ready = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert ready["state"] == "success"  # the handed-over secret connects
    secret = lightning.secret.encode()
    environ = Path(f"/proc/{pool.proc.pid}/environ").read_bytes()  # we are root or the owner
    assert b"WORKER_SECRET=" not in environ and secret not in environ
    assert b"WORKER_REPO_DIR=" in environ  # the rest of the environment is kept
    # the same pid: the executors are children of the process the operator started
    assert {e.ppid() for e in pool.executors()} == {pool.proc.pid}
    assert "re-executed without WORKER_SECRET in the environment" in pool.output
    assert pool.stop() == 0


def test_a_secret_given_as_a_flag_leaves_the_command_line(lightning: DevServer,
                                                          start_pool) -> None:
    env = {k: v for k, v in lightning.worker_env().items() if k != "WORKER_SECRET"}
    pool = start_pool("--size", "1", "--secret", lightning.secret, with_lightning_env=False,
                      env=env)
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    cmdline = psutil.Process(pool.proc.pid).cmdline()
    assert lightning.secret not in " ".join(cmdline) and "--secret" not in cmdline
    assert "--size" in cmdline  # the other flags are kept
    assert "re-executed without --secret on the command line" in pool.output
    assert pool.stop() == 0


def test_supervisor_and_executor_memory_is_unreadable_by_their_own_uid(
        lightning: DevServer, start_pool) -> None:
    user = unprivileged()
    pool = start_pool("--size", "1", user=user)
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    executor = wait_until(lambda: pool.executors(), "the executor")[0]
    assert executor.uids().real == user.uid
    targets = [f"/proc/{pid}/{what}" for pid in (pool.proc.pid, executor.pid)
               for what in ("mem", "environ")]
    # the attacker can read a dumpable process of the same uid: what the pool turned off
    neighbour = subprocess.Popen([user.python, "-c", "import time; time.sleep(60)"],
                                 env=user.env(os.environ), **user.popen)
    try:
        result = attack(*targets, f"/proc/{neighbour.pid}/environ", f"/proc/{neighbour.pid}/mem")
    finally:
        neighbour.kill()
        neighbour.wait()
    assert result[f"/proc/{neighbour.pid}/environ"] == "read", result
    assert result[f"/proc/{neighbour.pid}/mem"] == "read", result
    assert {path: result[path] for path in targets} == {path: "PermissionError"
                                                        for path in targets}, result
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert pool.stop() == 0


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace a file as an operator's tooling would (a new file renamed over the old)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text + "\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def start_with_secret_file(lightning: DevServer, start_pool, secret_file: Path):
    """A pool of two that reads Lightning's secret from ``secret_file`` (0600), not the env."""
    write_private(secret_file, lightning.secret)
    env = {k: v for k, v in lightning.worker_env().items() if k != "WORKER_SECRET"}
    return start_pool("--size", "2", with_lightning_env=False,
                      env={**env, "WORKER_SECRET_FILE": str(secret_file)})


def test_sighup_rotates_the_secret_with_runs_in_flight(lightning: DevServer, start_pool,
                                                       tmp_path: Path) -> None:
    secret_file = tmp_path / "worker-secret"
    pool = start_with_secret_file(lightning, start_pool, secret_file)
    ids = [lightning.enqueue(plan(job(SLOW_BODY))) for _ in range(4)]
    wait_until(lambda: sum("step:start" in events(lightning.run(i)) for i in ids) == 2,
               "two runs to be running")
    new = lightning.rotate_secret()  # Lightning now refuses new sockets signed with the old one

    # a file anyone can read is refused on reload too: the pool keeps its running settings
    write_private(secret_file, new, 0o644)
    pool.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: settings not reloaded" in pool.output, "the refused reload")
    assert "every user can read the secret" in pool.output

    write_private(secret_file, new)
    pool.proc.send_signal(signal.SIGHUP)
    runs = [wait_run(lightning, i) for i in ids]
    assert [r["state"] for r in runs] == ["success"] * 4, [r["error_message"] for r in runs]
    assert all(sum(e["event"] == "run:start" for e in r["events"]) == 1 for r in runs)
    assert "the worker secret changed; reconnecting to Lightning with it" in pool.output
    assert len(lightning.connections) == 2  # the second one signed with the new secret
    assert [r for r in lightning.rejections if r["event"] == "connect"] == []
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert pool.stop() == 0


def test_two_public_keys_in_a_file_verify_run_tokens_during_a_key_switch(
        lightning: DevServer, start_pool, tmp_path: Path) -> None:
    other = generate_worker_keys()["WORKER_LIGHTNING_PUBLIC_KEY"]
    keys = tmp_path / "lightning-public-keys"
    write_private(keys, f"{other},{lightning.public_key_b64}", 0o644)  # public: readable is fine
    env = {k: v for k, v in lightning.worker_env().items() if k != "WORKER_LIGHTNING_PUBLIC_KEY"}
    pool = start_pool("--size", "1", with_lightning_env=False,
                      env={**env, "WORKER_LIGHTNING_PUBLIC_KEY_FILE": str(keys)})
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    write_private(keys, lightning.public_key_b64, 0o644)  # the switch is over: one key
    pool.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "run tokens are now verified with 1 public key(s)" in pool.output,
               "the reload")
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert "run_token_refused" not in status(pool)["counters"]
    assert pool.stop() == 0


def test_after_lightning_restarts_with_a_new_secret_sighup_brings_the_pool_back(
        lightning: DevServer, start_pool, tmp_path: Path) -> None:
    """Lightning went first: the old token is refused (401, retried with back-off) until the
    pool is given the new secret; then it reconnects and reports its runs, each once."""
    secret_file = tmp_path / "worker-secret"
    pool = start_with_secret_file(lightning, start_pool, secret_file)
    ids = [lightning.enqueue(plan(job(SLOW_BODY))) for _ in range(2)]
    wait_until(lambda: all("step:start" in events(lightning.run(i)) for i in ids),
               "both runs to be running")
    new = lightning.rotate_secret()
    lightning.drop_sockets()  # as a restart would
    wait_until(lambda: any(r["event"] == "connect" for r in lightning.rejections),
               "the old secret to be refused")
    write_private(secret_file, new)
    pool.proc.send_signal(signal.SIGHUP)
    runs = [wait_run(lightning, i) for i in ids]
    assert [r["state"] for r in runs] == ["success"] * 2, [r["error_message"] for r in runs]
    assert all(sum(e["event"] == "run:start" for e in r["events"]) == 1 for r in runs)
    assert "HTTP 401 (check WORKER_SECRET)" in pool.output
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert pool.stop() == 0
