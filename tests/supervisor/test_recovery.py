"""Surviving our own death: ``kill -9`` of the supervisor with runs in flight, then a restart on
the same state dir. Every run the dead supervisor held ends with a reason within seconds —
never ``lost`` through Lightning's janitor — and no run is executed twice, even with a second
pool picking up what Lightning handed out again."""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pool.devserver.server import DevServer
from tests.supervisor.conftest import (
    DEADLINE,
    HELLO_BODY,
    REPO,
    Pool,
    events,
    job,
    lifecycle,
    plan,
    wait_run,
    wait_until,
)

# long enough to be mid-step at the kill; the run's own timeout and the janitor's grace are
# set so that an unreported run is marked lost by the dev server's janitor within this test
# module's deadlines (40 s + 5 s after its claim), as on the old code
SLOW_BODY = 'fn(state => new Promise(resolve => setTimeout(() => resolve(state), 30000)));'
ONE_SECOND_BODY = 'fn(state => new Promise(resolve => setTimeout(() => resolve(state), 1000)));'
OPTIONS = {"run_timeout_ms": 40_000}
GRACE_S = 5.0


@pytest.fixture
def lightning() -> Iterator[DevServer]:
    with DevServer(grace_period_s=GRACE_S, janitor_interval_s=0.2, join_timeout_s=3.0) as dev:
        yield dev


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    started: list[Pool] = []
    yield started
    for pool in started:
        pool.close()


def start(pools: list[Pool], lightning: DevServer, *args: str, **kwargs: object) -> Pool:
    shape = () if {"--size", "--workloops"} & set(args) else ("--size", "2")
    pool = Pool(lightning, *shape, *args, **kwargs)  # type: ignore[arg-type]
    pools.append(pool)
    return pool


def kill9(pool: Pool) -> float:
    """SIGKILL the supervisor, as the OOM killer would; returns when it is dead."""
    pool.proc.kill()
    pool.proc.wait()
    return time.time()


def enqueue_held(lightning: DevServer, body: str = HELLO_BODY, **fault: str) -> str:
    """A run whose next step on Lightning's side waits: ``fetch="fetch:plan"`` holds that
    reply (joined, never started), ``stall="phx_join"`` leaves its join unhandled."""
    run_id = lightning.enqueue(plan(job(body), options=OPTIONS), wakeup=False)
    if "hold" in fault:
        lightning.hold_reply_on(fault["hold"], 600, run_id=run_id)
    if "stall" in fault:
        lightning.stall_on(fault["stall"], 600, run_id=run_id)
    return run_id


def sent(lightning: DevServer, run_id: str, event: str) -> bool:
    return any(f["dir"] == "worker->lightning" and f["frame"][2:4] == [f"run:{run_id}", event]
               for f in list(lightning.frames) if isinstance(f["frame"], list))


def step_running(lightning: DevServer, run_id: str) -> bool:
    return "step:start" in events(lightning.run(run_id))


def final(lightning: DevServer, run_id: str) -> dict:
    """The run once final and recorded; ``lost`` (the janitor's doing) is a failure here."""
    run = lightning.wait_for_run(run_id, DEADLINE)
    assert run["state"] != "lost", f"run {run_id} ended {run['error_type']} via the janitor"
    return wait_run(lightning, run_id)


def run_starts(run: dict) -> int:
    return sum(1 for e in run["events"] if e["event"] == "run:start")


def recovered(pool: Pool) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{pool.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {s.labels["outcome"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "poolctl_recovered_runs_total"}


def assert_reported_crashed(run: dict, open_step: bool = True) -> None:
    assert run["state"] == "crashed", (run["state"], run["error_type"])
    assert run["error_type"] == "WorkerRestartError"
    assert "worker restarted while this run was in progress" in run["error_message"]
    if open_step:  # the step it was in is closed, as crashed, before the run
        assert lifecycle(run) == ["run:start", "step:start", "step:complete", "run:complete"]
        [step] = run["steps"].values()
        assert (step["reason"], step["error_type"]) == ("crash", "WorkerRestartError")


def test_kill9_with_a_started_and_a_joined_run_both_end_with_a_reason(
        lightning: DevServer, pools: list[Pool], tmp_path: Path) -> None:
    env = {"WORKER_STATE_DIR": str(tmp_path / "state")}
    first = start(pools, lightning, env=env)
    started = enqueue_held(lightning, SLOW_BODY)
    joined = enqueue_held(lightning, hold="fetch:plan")
    lightning.push_work_available()
    wait_until(lambda: step_running(lightning, started) and sent(lightning, joined, "fetch:plan"),
               "one run mid-step, the other joined and fetching its plan")
    killed_at = kill9(first)
    again = start(pools, lightning, env=env, port=first.port)
    restarted_at = time.time()
    runs = {name: final(lightning, run_id) for name, run_id in
            (("started", started), ("joined", joined))}
    timeline = [f"kill -9 at 0.00s; restart at {restarted_at - killed_at:.2f}s"] + [
        f"{name} run {run['state']} ({run['error_type']}) at "
        f"{run['times']['completed'] / 1e6 - killed_at:.2f}s" for name, run in runs.items()]
    print("\n".join(timeline))

    assert_reported_crashed(runs["started"])
    assert run_starts(runs["started"]) == 1
    # never dispatched before the kill: executed now, once, on the rejoined channel
    assert runs["joined"]["state"] == "success", runs["joined"]["error_message"]
    assert run_starts(runs["joined"]) == 1
    assert sum(1 for e in runs["joined"]["events"] if e["event"] == "phx_join") == 2
    assert lightning.rejections == []
    # reported within seconds, long before the janitor (45 s after the claim) would act
    assert all(run["state"] != "lost" for run in runs.values())
    assert recovered(again) == {"reported": 1, "executed": 1, "left": 0, "expired": 0,
                                "refused": 0}
    # both slots are free again (the report held none, the executed run gave its back):
    # two runs now run side by side
    pair = [lightning.enqueue(plan(job(ONE_SECOND_BODY))) for _ in range(2)]
    first_done, second = (wait_run(lightning, run_id) for run_id in pair)
    assert first_done["state"] == second["state"] == "success"
    assert second["times"]["claimed"] < first_done["times"]["completed"]
    assert again.stop() == 0


def test_a_restart_slower_than_the_join_timeout_with_a_second_pool_runs_nothing_twice(
        lightning: DevServer, pools: list[Pool], tmp_path: Path) -> None:
    env = {"WORKER_STATE_DIR": str(tmp_path / "state")}
    first = start(pools, lightning, "--size", "3", env=env)
    started = enqueue_held(lightning, SLOW_BODY)
    joined = enqueue_held(lightning, hold="fetch:plan")
    unjoined = enqueue_held(lightning, stall="phx_join")
    lightning.push_work_available()
    wait_until(lambda: step_running(lightning, started) and sent(lightning, joined, "fetch:plan")
               and sent(lightning, unjoined, "phx_join"),
               "a run mid-step, one joined, one whose join Lightning has not handled")
    kill9(first)
    other = start(pools, lightning, "--size", "1")  # another pool, its own journal
    # Lightning hands the never-joined run out again after its join timeout: the other pool
    # runs it while the first is still down
    assert final(lightning, unjoined)["state"] == "success"
    again = start(pools, lightning, "--size", "3", env=env, port=first.port)
    assert_reported_crashed(final(lightning, started))
    assert final(lightning, joined)["state"] == "success"
    wait_until(lambda: f"run {unjoined} was claimed but never joined" in again.output,
               "the restarted pool to leave the never-joined run to Lightning")
    for run_id in (started, joined, unjoined):
        assert run_starts(lightning.run(run_id)) == 1, run_id
    # the never-joined run was never touched by the restarted pool: one connection did it all
    conns = {e["conn"] for e in lightning.run(unjoined)["events"]
             if e["reply"]["status"] == "ok"}
    assert len(conns) == 1
    assert recovered(again)["left"] == 1
    assert again.stop() == 0 and other.stop() == 0


def test_a_rejoin_lightning_does_not_answer_holds_up_no_new_work(
        lightning: DevServer, pools: list[Pool], tmp_path: Path) -> None:
    env = {"WORKER_STATE_DIR": str(tmp_path / "state"), "WORKER_MESSAGE_TIMEOUT_SECONDS": "1"}
    first = start(pools, lightning, env=env)
    started = enqueue_held(lightning, SLOW_BODY)
    lightning.push_work_available()
    wait_until(lambda: step_running(lightning, started), "the run to be mid-step")
    kill9(first)
    lightning.stall_on("phx_join", 8, run_id=started)  # Lightning sits on the rejoin
    again = start(pools, lightning, env=env, port=first.port)
    fresh = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert fresh["state"] == "success"  # served while Lightning sits on the rejoin
    # the rejoin times out after the message timeout (1 s), which may come after the fresh run
    wait_until(lambda: f"run {started}: no answer to its rejoin" in again.output,
               "the unanswered rejoin to be logged")
    assert lightning.run(started)["state"] == "started"  # still waiting: new work did not
    # once Lightning answers a later rejoin, the run is reported after all
    reported = final(lightning, started)
    assert_reported_crashed(reported)
    assert reported["times"]["completed"] > fresh["times"]["completed"]
    assert again.output.count(f"run {started}: no answer to its rejoin") == 1
    assert again.stop() == 0


def test_a_torn_journal_record_is_skipped_and_the_run_still_reported(
        lightning: DevServer, pools: list[Pool], tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start(pools, lightning, env={"WORKER_STATE_DIR": str(state)})
    started = enqueue_held(lightning, SLOW_BODY)
    lightning.push_work_available()
    wait_until(lambda: step_running(lightning, started), "the run to be mid-step")
    kill9(first)
    [journal] = state.glob("*.journal")
    with journal.open("ab") as fh:  # the process died half-way through a record
        fh.write(b'1badc0de {"k":"step_done","id":"' + started.encode())
    again = start(pools, lightning, env={"WORKER_STATE_DIR": str(state)}, port=first.port)
    assert_reported_crashed(final(lightning, started))
    assert "1 torn or damaged record(s) skipped" in again.output
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert again.stop() == 0


def test_an_expired_token_is_logged_once_and_new_work_is_served(
        lightning: DevServer, pools: list[Pool], tmp_path: Path) -> None:
    env = {"WORKER_STATE_DIR": str(tmp_path / "state")}
    first = start(pools, lightning, env=env)
    lightning.set_run_token_lifetime(2)
    started = enqueue_held(lightning, SLOW_BODY)
    lightning.push_work_available()
    wait_until(lambda: step_running(lightning, started), "the run to be mid-step")
    kill9(first)
    lightning.set_run_token_lifetime(None)
    claimed_s = lightning.run(started)["times"]["claimed"] / 1e6
    time.sleep(max(0.0, claimed_s + 3.5 - time.time()))  # the token's exp has passed
    again = start(pools, lightning, env=env, port=first.port)
    line = f"run {started}: its run token expired"
    wait_until(lambda: line in again.output, "the expired token to be logged")
    assert wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))["state"] == "success"
    assert again.output.count(line) == 1  # once, with the run id
    assert lightning.run(started)["state"] == "started"  # the janitor's now, nobody else's
    assert any(r["event"] == "phx_join" and r["run_id"] == started and "expired" in r["reason"]
               for r in lightning.rejections)
    assert recovered(again)["expired"] == 1
    assert again.stop() == 0


def test_two_pools_on_one_state_dir_keep_separate_journals(
        lightning: DevServer, pools: list[Pool], tmp_path: Path) -> None:
    state = tmp_path / "shared"
    env = {"WORKER_STATE_DIR": str(state), "WORKER_NAME": "pod-a"}
    a = start(pools, lightning, "--workloops", "a:1", env=env)
    b = start(pools, lightning, "--workloops", "b:1",
              env={**env, "WORKER_NAME": "pod-b"})
    run_a = lightning.enqueue(plan(job(SLOW_BODY), options=OPTIONS), queue="a")
    run_b = lightning.enqueue(plan(job(
        'fn(state => new Promise(resolve => setTimeout(() => resolve(state), 4000)));'),
        options=OPTIONS), queue="b")
    wait_until(lambda: step_running(lightning, run_a) and step_running(lightning, run_b),
               "a run mid-step in each pool")
    assert sorted(p.name for p in state.glob("*.journal")) == [
        f"pod-a-{a.port}.journal", f"pod-b-{b.port}.journal"]
    kill9(a)
    again = start(pools, lightning, "--workloops", "a:1", env=env, port=a.port)
    assert_reported_crashed(final(lightning, run_a))
    assert wait_run(lightning, run_b)["state"] == "success"  # b's run was never a's business
    assert f"run {run_b}" not in again.output
    # the same identity again (same name and port, another address) is refused at start
    dup = subprocess.run(
        [*again.proc.args[:2], "start", "--offline", "--port", str(again.port),
         "--http-host", "127.0.0.2", "--control-socket", str(tmp_path / "dup.sock"),
         "--workloops", "a:1"], env={**dict(_env_of(again)), **env},
        capture_output=True, text=True, timeout=DEADLINE)
    assert dup.returncode == 2, dup.stderr
    assert re.search(r"journal .*pod-a-\d+\.journal is held by another poolctl \(pid \d+\)",
                     dup.stderr), dup.stderr
    assert again.stop() == 0 and b.stop() == 0


def _env_of(pool: Pool) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("WORKER_")},
            "WORKER_REPO_DIR": REPO, **pool.lightning.worker_env()}


def test_a_rejoin_refused_because_the_run_is_final_frees_its_slot_at_once(
        lightning: DevServer, pools: list[Pool]) -> None:
    """Lightning handled run:complete but the socket died before its reply: the rejoin is
    refused (the run is final), and the pool gives the rest up at once instead of holding the
    run's slot until its token expires."""
    pool = start(pools, lightning, "--size", "1")
    run_id = lightning.enqueue(plan(job(HELLO_BODY)))
    lightning.hold_reply_on("run:complete", 3, run_id=run_id)
    assert lightning.wait_for_run(run_id, DEADLINE)["state"] == "success"
    lightning.drop_sockets()  # the held reply never goes out
    after = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert after["state"] == "success"  # the one executor's slot was freed
    assert f"run {run_id}: Lightning refused the rejoin" in pool.output
    assert pool.stop() == 0
