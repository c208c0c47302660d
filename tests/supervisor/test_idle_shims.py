"""A shim that dies while idle is seen when it dies and replaced before a run needs it
(issue 13, item 2): the next run is not taken down with it."""

from __future__ import annotations

import signal
import time
import urllib.request

import psutil

from pool.devserver.server import DevServer
from pool.supervisor.control import default_control_socket, request
from tests.supervisor.conftest import HELLO_BODY, events, job, plan, wait_run, wait_until

SPIN_BODY = "fn(state => { while (true) {} });"


def metric(pool, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{pool.port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return float(next(ln for ln in text.splitlines() if ln.startswith(name + " ")).split()[-1])


def control(pool, cmd: str) -> dict:
    return request(default_control_socket(pool.port), cmd)


def dead(process: psutil.Process) -> bool:
    """Exited (a zombie until its executor reaps it, or gone)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_an_idle_shim_killed_is_replaced_at_once_and_the_next_run_is_not_hurt(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1")
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    (shim,) = wait_until(lambda: len(s := pool.shims()) == 1 and s, "the warm shim")
    shim.send_signal(signal.SIGKILL)
    # replaced without any run asking for it
    wait_until(lambda: [s.pid for s in pool.shims()] not in ([], [shim.pid]),
               "a new shim to replace the killed one", deadline=20)
    wait_until(lambda: metric(pool, "poolctl_shims_lost_total") == 1, "shim_lost counted",
               deadline=20)
    # a run that never returns is timed out (kill), not "crashed" by a dead shim
    spin = wait_run(lightning, lightning.enqueue(plan(job(SPIN_BODY),
                                                      options={"run_timeout_ms": 1000})))
    assert (spin["state"], spin["error_type"]) == ("killed", "TimeoutError"), spin
    assert pool.stop() == 0


def test_a_run_sent_as_soon_as_the_idle_shim_died_succeeds(lightning: DevServer,
                                                            start_pool) -> None:
    pool = start_pool("--size", "1")
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    (shim,) = wait_until(lambda: len(s := pool.shims()) == 1 and s, "the warm shim")
    shim.send_signal(signal.SIGKILL)
    wait_until(lambda: dead(shim), "the shim to be dead")
    run = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert run["state"] == "success", run
    assert pool.stop() == 0


def test_a_shim_that_dies_as_the_run_reaches_it_hands_the_run_to_a_fresh_one(
        lightning: DevServer, start_pool) -> None:
    """No check before the hand-over can close the race (Node is still tearing its threads
    down, or is killed a microsecond after the check): a shim that exits before it said
    anything about the run ran none of its code, so the run goes to a fresh shim."""
    pool = start_pool("--size", "1")
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    (shim,) = wait_until(lambda: len(s := pool.shims()) == 1 and s, "the warm shim")
    shim.send_signal(signal.SIGSTOP)  # alive to every check, but it reads nothing
    try:
        run_id = lightning.enqueue(plan(job(HELLO_BODY)))
        wait_until(lambda: [e["run_id"] for e in control(pool, "status")["executors"]]
                   == [run_id], "the executor to take the run")
        time.sleep(0.5)  # the hand-over to the shim takes microseconds after that
        shim.send_signal(signal.SIGKILL)
    finally:
        shim.send_signal(signal.SIGCONT)
    run = wait_run(lightning, run_id)
    assert run["state"] == "success", run
    assert events(run).count("run:start") == 1
    assert "died before it read run" in pool.output
    assert pool.stop() == 0


def quiet(process: psutil.Process) -> bool:
    """Booted and waiting: it used no CPU over the last 0.3 s."""
    before = sum(process.cpu_times()[:2])
    time.sleep(0.3)
    return sum(process.cpu_times()[:2]) == before


def test_the_strict_standby_killed_during_a_run_does_not_take_the_next_run(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", "--isolation", "strict")
    (first,) = wait_until(lambda: len(s := pool.shims()) == 1 and s, "the first standby")
    long_body = "fn(state => new Promise(resolve => setTimeout(() => resolve(state), 5000)));"
    run_id = lightning.enqueue(plan(job(long_body)))
    wait_until(lambda: "step:start" in events(lightning.run(run_id)), "the long run to start")
    standby = wait_until(lambda: [s for s in pool.shims() if s.pid != first.pid],
                         "the next standby")[0]
    wait_until(lambda: quiet(standby), "the standby to be warm", deadline=20)
    assert "step:complete" not in events(lightning.run(run_id))  # still during the run
    standby.send_signal(signal.SIGKILL)
    assert wait_run(lightning, run_id)["state"] == "success"
    after = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert after["state"] == "success", after
    assert pool.stop() == 0
