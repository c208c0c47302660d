"""``make show-restart``: the kill-and-restart timeline, for any checkout of poolctl.

A pool of two executors holds two runs — one mid-step, one joined whose plan Lightning has
not sent yet — when its supervisor is killed with SIGKILL (as the OOM killer does); it is
started again at once on the same state dir and port. The dev server's janitor is set as
Lightning's with a 20 s run timeout and a 5 s grace, so a run nobody reports becomes ``lost``
25 s after its claim. Printed: the kill, the restart, and each run's final state and when,
in seconds from the kill.

    python -m pool.bench.restart                          # this checkout
    python -m pool.bench.restart --root /tmp/old-checkout # another one (its bin/poolctl)

``--startup [--baseline ROOT]`` measures instead what the journal adds to a start with nothing
to recover: opening and replaying it (an empty state dir, a journal left by a clean stop, one
full of finished runs just under the compaction size), and ``poolctl start`` to ``/readyz``
200 on the same state dir, alternating with the baseline checkout's when given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from pool.bench.pool_process import free_port
from pool.devserver.server import DevServer
from pool.supervisor.journal import COMPACT_BYTES, Journal

ROOT = Path(__file__).resolve().parents[2]
COMMON = "@openfn/language-common@3.3.4"
SLOW = 'fn(state => new Promise(resolve => setTimeout(() => resolve(state), 60000)));'
HELLO = 'fn(state => ({ ...state, data: { hello: "world" } }));'
OPTIONS = {"run_timeout_ms": 20_000}
GRACE_S = 5.0
WAIT_S = 60.0


def _plan(body: str) -> dict:
    return {"jobs": [{"id": "job-1", "adaptor": COMMON, "body": body}], "edges": [],
            "triggers": [], "options": OPTIONS}


def _start(root: Path, server: DevServer, port: int, state: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env |= server.worker_env() | {"WORKER_STATE_DIR": state,
                                  "WORKER_REPO_DIR": os.environ.get("WORKER_REPO_DIR",
                                                                    str(ROOT / ".repo"))}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(root / "bin" / "poolctl"), "start", "--size", "2",
             "--isolation", "context", "--offline", "--backoff", "0.05/0.5",
             "--port", str(port), "--http-host", "127.0.0.1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)


def _wait(what: str, check: object, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _has(server: DevServer, run_id: str, event: str) -> bool:
    return any(e["event"] == event for e in server.run(run_id)["events"])


def show(root: Path) -> list[str]:
    """Run the scenario against the checkout at ``root``; the timeline's lines."""
    tmp = Path(tempfile.mkdtemp(prefix="poolctl-restart-"))
    log = tmp / "poolctl.log"
    lines = [f"checkout {root} ({_commit(root)}); pool log {log}"]
    with DevServer(grace_period_s=GRACE_S, janitor_interval_s=0.2) as server:
        port = free_port()
        first = _start(root, server, port, str(tmp / "state"), log)
        try:
            started = server.enqueue(_plan(SLOW), wakeup=False)
            joined = server.enqueue(_plan(HELLO), wakeup=False)
            server.hold_reply_on("fetch:plan", 600, run_id=joined)  # joined, never started
            server.push_work_available()
            _wait("a run mid-step and a joined one", lambda: _has(server, started, "step:start")
                  and _has(server, joined, "fetch:plan"))
        except BaseException:
            first.kill()
            raise
        first.kill()
        first.wait()
        killed = time.time()
        lines.append(f"{0.0:7.2f}s  kill -9 of the supervisor (pid {first.pid}) with run "
                     f"{started[:8]} mid-step and run {joined[:8]} joined, not started")
        again = _start(root, server, port, str(tmp / "state"), log)
        lines.append(f"{time.time() - killed:7.2f}s  poolctl start again, same state dir "
                     "and port")
        try:
            for run_id, what in ((started, "mid-step"), (joined, "joined")):
                run = server.wait_for_run(run_id, WAIT_S)
                at = run["times"]["completed"] / 1e6 - killed
                lines.append(f"{at:7.2f}s  run {run_id[:8]} ({what}): {run['state']}"
                             f" ({run['error_type'] or 'no error'}); "
                             f"run:start sent {sum(e['event'] == 'run:start' for e in run['events'])}"
                             " time(s)")
        finally:
            again.terminate()
            again.wait(30)
    return lines


def _open_ms(state: Path, reps: int = 200) -> float:
    """Median milliseconds of opening (lock, replay, rewrite) and closing the journal."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        journal = Journal(state, "bench-2222")
        journal.open()
        journal.close()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _ready_s(root: Path, server: DevServer, state: str, log: Path) -> float:
    """Seconds from ``poolctl start`` to ``/readyz`` answering 200, then a graceful stop."""
    port = free_port()
    t0 = time.monotonic()
    proc = _start(root, server, port, state, log)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"poolctl start exited {proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(30)


def startup(baseline: Path | None, reps: int = 5) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="poolctl-startup-"))
    lines = [f"journal open + replay + rewrite (median of 200), ms: empty state dir "
             f"{_open_ms(tmp / 'empty', 1):.3f} (first), left by a clean stop "
             f"{_open_ms(tmp / 'empty'):.3f}"]
    full = Journal(tmp / "full", "bench-2222", compact_bytes=10 * COMPACT_BYTES)
    full.open()
    run = 0
    while full.size < COMPACT_BYTES - 2000:  # finished runs just under the compaction size
        run += 1
        full.claimed(f"run-{run}", "t" * 700, time.time() + 360, 0)
        for mark in (full.joined, full.dispatched, full.started):
            mark(f"run-{run}")
        full.done(f"run-{run}")
    full.close(compact=False)  # as a kill -9 leaves it: a clean stop would compact it
    # every open rewrites the file to its live runs (none), so measure the full one once
    size = (tmp / "full" / "bench-2222.journal").stat().st_size
    lines.append(f"  a journal of {run} finished runs ({size // 1024} KiB), nothing live: "
                 f"{_open_ms(tmp / 'full', 1):.3f}")
    roots = [("this checkout", ROOT)] + ([("baseline " + _commit(baseline), baseline)]
                                         if baseline else [])
    ready: dict[str, list[float]] = {name: [] for name, _ in roots}
    with DevServer() as server:
        for _ in range(reps):
            for name, root in roots:  # alternating, so both see the same machine
                ready[name].append(_ready_s(root, server, str(tmp / "state"), tmp / "pool.log"))
    for name, values in ready.items():
        lines.append(f"poolctl start -> /readyz 200, {name}: median {statistics.median(values):.3f}s"
                     f" (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")
    return lines


def _commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="checkout whose bin/poolctl is killed and restarted")
    parser.add_argument("--startup", action="store_true",
                        help="measure what the journal adds to a start with nothing to recover")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="with --startup: a checkout to compare with (e.g. before the journal)")
    args = parser.parse_args()
    if args.startup:
        print("\n".join(startup(args.baseline.resolve() if args.baseline else None)), flush=True)
    else:
        print("\n".join(show(args.root.resolve())), flush=True)


if __name__ == "__main__":
    main()
