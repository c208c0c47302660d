"""Lifecycle with real processes: recycling, signals, resizing, health, metrics, orphans.

``poolctl start`` runs as a subprocess against the dev server; the control commands run as
``poolctl`` subprocesses too, finding the pool's socket from ``--port`` alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from pool.devserver.server import DevServer
from pool.supervisor.control import ControlError, default_control_socket, request
from tests.supervisor.conftest import (
    COMMON,
    DEADLINE,
    HELLO_BODY,
    Pool,
    events,
    http_get,
    job,
    plan,
    wait_run,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]


def sleeper(ms: int) -> dict[str, Any]:
    body = f"fn(state => new Promise(resolve => setTimeout(() => resolve(state), {ms})));"
    return plan({"id": "job-1", "adaptor": COMMON, "body": body})


def metrics(pool: Pool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(pool.port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def poolctl(pool: Pool, *args: str) -> subprocess.CompletedProcess[str]:
    """``poolctl <args> --port <the pool's port>``: the socket is found from the port alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    return subprocess.run([sys.executable, str(ROOT / "bin" / "poolctl"), *args,
                           "--port", str(pool.port)], env=env, capture_output=True, text=True,
                          timeout=DEADLINE)


def status(pool: Pool) -> dict[str, Any]:
    done = poolctl(pool, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_ready(pool: Pool) -> None:
    wait_until(lambda: http_get(pool.port, "/readyz")[0] == 200 or pool.proc.poll() is not None,
               "/readyz 200")
    assert pool.proc.poll() is None, pool.output[-3000:]


def executor_pids(pool: Pool) -> set[int]:
    """Live executors; a retired one may be a zombie for a moment, which psutil refuses to
    describe, so those are skipped rather than failing the look."""
    pids = set()
    try:
        children = psutil.Process(pool.proc.pid).children()
    except psutil.NoSuchProcess:
        return pids
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "pool.executor" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:
            continue
    return pids


def wait_size(pool: Pool, size: int) -> set[int]:
    return wait_until(lambda: len(p := executor_pids(pool)) == size and p, f"{size} executors")


def started(lightning: DevServer, run_id: str) -> bool:
    return "step:start" in events(lightning.run(run_id))


def test_readyz_before_warm_and_while_draining_and_one_pool_per_socket(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1")
    first = wait_until(lambda: http_get(pool.port, "/readyz")[0], "the HTTP server")
    assert first == 503  # HTTP is up before any executor is warm or the queue is joined
    wait_ready(pool)
    twin = start_pool("--size", "1", "--port", str(pool.port))
    assert twin.proc.wait(DEADLINE) == 2
    assert "a pool is already running with control socket" in twin.output
    drained = poolctl(pool, "drain")
    assert drained.returncode == 0 and "draining" in drained.stdout
    code, body = http_get(pool.port, "/readyz")
    assert (code, json.loads(body)["reason"]) == (503, "draining")
    waiting = lightning.enqueue(plan(job(HELLO_BODY)))
    lightning.push_work_available()
    assert pool.proc.poll() is None  # a drained pool stays up, and claims nothing
    assert pool.stop() == 0
    assert lightning.run(waiting)["state"] == "available"


def test_recycling_under_load_loses_no_run_and_is_counted(lightning: DevServer,
                                                         start_pool) -> None:
    # recycling by run count is context's (strict replaces its shim after every run anyway)
    pool = start_pool("--size", "2", "--recycle-runs", "2", "--recycle-jitter", "0",
                      "--isolation", "context")
    wait_ready(pool)
    ids = [lightning.enqueue(plan(job(HELLO_BODY))) for _ in range(12)]
    runs = [wait_run(lightning, i) for i in ids]
    assert [r["state"] for r in runs] == ["success"] * 12
    # an executor reports ready (after replacing its shim) just after its run's completion
    def all_ready_again() -> dict[str, Any] | None:
        now = status(pool)
        return now if sum(e["runs_done"] for e in now["executors"]) == 12 else None

    snapshot = wait_until(all_ready_again, "every executor to be ready again")
    assert all(e["rss_bytes"] > 10_000_000 for e in snapshot["executors"])  # executor + shim
    got = metrics(pool)
    assert got[("poolctl_runs_total", (("reason", "success"),))] == 12
    assert got[("poolctl_run_claim_to_complete_seconds_count", ())] == 12
    assert got[("poolctl_run_claim_to_dispatch_seconds_count", ())] == 12
    assert got[("poolctl_runs_claimed_total", ())] == 12
    # each executor replaces its shim after every 2nd run: 12 runs over 2 executors → 5 or 6;
    # the last replacement may still be warming, so compare /metrics and status once settled
    def recycles_settled() -> float | None:
        scraped = metrics(pool)[("poolctl_shim_recycles_total", (("cause", "runs"),))]
        counted = status(pool)["counters"].get("shim_recycled[cause=runs]")
        return scraped if scraped >= 5 and scraped == counted else None

    assert wait_until(recycles_settled, "/metrics and status to agree on 5+ recycles")
    assert pool.stop() == 0


def test_sigterm_lets_runs_in_flight_finish_and_claims_nothing_new(lightning: DevServer,
                                                                   start_pool) -> None:
    pool = start_pool("--size", "2")
    wait_ready(pool)
    ids = [lightning.enqueue(sleeper(1500)) for _ in range(2)]
    wait_until(lambda: all(started(lightning, i) for i in ids), "both runs to start")
    pool.proc.send_signal(signal.SIGTERM)
    late = lightning.enqueue(plan(job(HELLO_BODY)))
    assert pool.proc.wait(DEADLINE) == 0
    assert [lightning.run(i)["state"] for i in ids] == ["success", "success"]
    assert lightning.run(late)["state"] == "available"


def test_a_second_sigterm_stops_fast_and_reports_runs_as_killed(lightning: DevServer,
                                                                start_pool) -> None:
    pool = start_pool("--size", "1")
    wait_ready(pool)
    run_id = lightning.enqueue(sleeper(120_000))
    wait_until(lambda: started(lightning, run_id), "the run to start")
    pool.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping gracefully" in pool.output, "the drain to begin")
    pool.proc.send_signal(signal.SIGTERM)
    assert pool.proc.wait(DEADLINE) == 0  # far sooner than the run's two minutes
    run = lightning.run(run_id)
    assert (run["state"], run["reason"]) == ("killed", "kill")


def test_sigquit_stops_fast(lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1")
    wait_ready(pool)
    run_id = lightning.enqueue(sleeper(120_000))
    wait_until(lambda: started(lightning, run_id), "the run to start")
    pool.proc.send_signal(signal.SIGQUIT)
    assert pool.proc.wait(DEADLINE) == 0
    assert lightning.run(run_id)["reason"] == "kill"


def test_kill_9_leaves_no_process_and_a_stale_socket_is_replaced(lightning: DevServer,
                                                                 start_pool) -> None:
    sock = os.path.join(tempfile.mkdtemp(prefix="poolctl-test-"), "ctl.sock")
    pool = start_pool("--size", "2", "--control-socket", sock)
    wait_ready(pool)
    run_id = lightning.enqueue(sleeper(120_000))
    wait_until(lambda: started(lightning, run_id), "the run to start")
    family = psutil.Process(pool.proc.pid).children(recursive=True)
    assert len(family) >= 4  # two executors, each with its Node shim
    pool.proc.kill()
    pool.proc.wait()
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], [p.pid for p in alive]
    assert os.path.exists(sock)  # a SIGKILLed pool cannot clean up: the next one must cope
    again = start_pool("--size", "1", "--control-socket", sock)
    wait_ready(again)
    assert again.stop() == 0


def test_sighup_replaces_every_executor_under_load_and_loses_no_run(lightning: DevServer,
                                                                    start_pool) -> None:
    pool = start_pool("--size", "2")
    wait_ready(pool)
    before = executor_pids(pool)
    ids = [lightning.enqueue(sleeper(300)) for _ in range(10)]
    wait_until(lambda: started(lightning, ids[0]), "the first run to start")
    pool.proc.send_signal(signal.SIGHUP)
    runs = [wait_run(lightning, i) for i in ids]
    assert [r["state"] for r in runs] == ["success"] * 10
    assert all(sum(e["event"] == "run:start" for e in r["events"]) == 1 for r in runs)
    after = wait_until(lambda: (ps := executor_pids(pool)).isdisjoint(before)
                       and len(ps) == 2 and ps, "two new executors, none of the old")
    assert after.isdisjoint(before)
    assert "SIGHUP: settings reloaded; replacing 2 executors" in pool.output
    assert pool.stop() == 0


def test_ttin_ttou_and_poolctl_scale_under_load_and_the_size_survives_sighup(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1")
    wait_ready(pool)
    ids = [lightning.enqueue(sleeper(400)) for _ in range(12)]
    pool.proc.send_signal(signal.SIGTTIN)
    wait_size(pool, 2)
    scaled = poolctl(pool, "scale", "3")
    assert (scaled.returncode, scaled.stdout.strip()) == (0, "size 3 (was 2)")
    wait_size(pool, 3)
    pool.proc.send_signal(signal.SIGTTOU)
    wait_until(lambda: status(pool)["size"] == 2, "size 2")
    runs = [wait_run(lightning, i) for i in ids]
    assert [r["state"] for r in runs] == ["success"] * 12
    wait_size(pool, 2)
    pool.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: settings reloaded" in pool.output, "the reload")
    assert status(pool)["size"] == 2  # not back to --size 1
    refused = poolctl(pool, "scale", "0")
    assert refused.returncode == 1 and "size must be at least 1" in refused.stderr
    assert pool.stop() == 0


def test_scale_with_workloops_changes_the_last_one_only(lightning: DevServer,
                                                        start_pool) -> None:
    pool = start_pool("--workloops", "fast_lane:1 manual>*:1")
    wait_ready(pool)
    refused = poolctl(pool, "scale", "1")
    assert refused.returncode == 1
    assert "the other workloops hold 1 slot(s)" in refused.stderr
    assert poolctl(pool, "scale", "3").returncode == 0
    wait_size(pool, 3)
    ran = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert ran["state"] == "success"
    assert pool.stop() == 0


def test_metrics_counters_match_the_runs_done(lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "2")
    wait_ready(pool)
    ok = [lightning.enqueue(plan(job(HELLO_BODY))) for _ in range(3)]
    failing = lightning.enqueue(plan(job("fn(() => { throw new Error('no'); });")))
    runs = [wait_run(lightning, i) for i in [*ok, failing]]
    by_reason: dict[str, int] = {}
    for run in runs:
        by_reason[run["reason"]] = by_reason.get(run["reason"], 0) + 1
    # Lightning records a run at its run:complete; the pool counts it once Lightning's reply is in
    def all_counted() -> dict | None:
        scraped = metrics(pool)
        total = sum(v for (name, _), v in scraped.items() if name == "poolctl_runs_total")
        idle = scraped.get(("poolctl_executors", (("state", "idle"),)))
        return scraped if total >= 4 and idle == 2 else None

    got = wait_until(all_counted, "the pool to count every run and be idle again")
    for reason, n in by_reason.items():
        assert got[("poolctl_runs_total", (("reason", reason),))] == n
    assert sum(v for (name, _), v in got.items() if name == "poolctl_runs_total") == 4
    assert got[("poolctl_executors", (("state", "idle"),))] == 2
    assert status(pool)["runs_by_reason"] == by_reason
    assert pool.stop() == 0


def test_runs_past_the_graceful_timeout_are_killed_and_reported(lightning: DevServer,
                                                                start_pool) -> None:
    pool = start_pool("--size", "1", "--graceful-timeout", "1")
    wait_ready(pool)
    run_id = lightning.enqueue(sleeper(120_000))
    wait_until(lambda: started(lightning, run_id), "the run to start")
    pool.proc.send_signal(signal.SIGTERM)
    assert pool.proc.wait(DEADLINE) == 0
    assert lightning.run(run_id)["reason"] == "kill"


def test_a_strict_executor_never_shows_a_finished_run_as_running(lightning: DevServer,
                                                                 start_pool) -> None:
    # issue 13: after a run, a strict executor showed `busy` with that run's id for ~0.6 s
    # (while it boots the fresh shim the next run gets); readiness stays 200 meanwhile
    pool = start_pool("--size", "1", "--isolation", "strict")
    path = default_control_socket(pool.port)
    wait_until(lambda: _status(path), "the pool to serve status")
    run_id = lightning.enqueue(plan(job("fn(s => s)")))
    assert wait_run(lightning, run_id)["state"] == "success"
    seen: list[tuple[str, str | None]] = []
    end = time.monotonic() + DEADLINE  # until it is idle again (its next shim boots in ~0.6 s)
    while time.monotonic() < end and seen[-1:] != [("idle", None)]:
        [executor] = _status(path)["executors"]
        seen.append((executor["state"], executor["run_id"]))
        assert http_get(pool.port, "/readyz")[0] == 200
    assert seen[-1] == ("idle", None), seen[-5:]
    assert not [s for s in seen if s[1] == run_id], seen[:5]
    assert pool.stop() == 0


def _status(path: str) -> Any:
    try:
        return request(path, "status", timeout=10)
    except ControlError:
        return None
