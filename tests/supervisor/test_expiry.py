"""The run token's ``exp`` bounds the retries and the events kept through an outage: past it,
Lightning would refuse the rejoin, so the supervisor gives the run up (counted as lost, logged),
stops what its executor still runs, and serves the next run — no hang."""

from __future__ import annotations

from pool.devserver.server import DevServer
from tests.supervisor.conftest import HELLO_BODY, job, plan, wait_run, wait_until

# runs far longer than any deadline of this test: only a cancel frees its executor in time
ENDLESS_BODY = "fn(state => new Promise(resolve => setTimeout(() => resolve(state), 600000)));"


def test_a_reply_held_past_the_token_expiry_gives_the_run_up_and_frees_its_executor(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", env={"WORKER_MESSAGE_TIMEOUT_SECONDS": "1"})
    lightning.set_run_token_lifetime(3)
    run_id = lightning.enqueue(plan(job(ENDLESS_BODY)))
    lightning.hold_reply_on("run:start", 600, run_id=run_id)  # Lightning never answers in time
    wait_until(lambda: f"run {run_id} complete: lost" in pool.output,
               "the supervisor to give the run up")
    assert f"run {run_id}: gave up reporting it" in pool.output
    # sent again until then (the copies wait behind the held reply), each with the same ids
    starts = [f["frame"][4] for f in lightning.frames if f["dir"] == "worker->lightning"
              and f["frame"][2:4] == [f"run:{run_id}", "run:start"]]
    assert len(starts) >= 2 and all(s == starts[0] for s in starts), starts
    assert lightning.run(run_id)["state"] == "started"  # never reported: Lightning's janitor's

    lightning.set_run_token_lifetime(None)
    after = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert after["state"] == "success", after["error_message"]  # the one executor is free
    assert pool.stop() == 0


def test_events_kept_through_an_outage_are_given_up_once_the_token_expires(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", env={"WORKER_MESSAGE_TIMEOUT_SECONDS": "1"})
    lightning.set_run_token_lifetime(3)
    run_id = lightning.enqueue(plan(job(ENDLESS_BODY)))
    lightning.drop_socket_on("step:start", run_id=run_id, refuse_for=6)  # outlives the token
    wait_until(lambda: f"run {run_id} complete: lost" in pool.output,
               "the supervisor to give the run up")
    assert f"run {run_id}: gave up reporting it" in pool.output
    assert lightning.run(run_id)["state"] == "started"

    lightning.set_run_token_lifetime(None)
    after = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))  # once reconnected
    assert after["state"] == "success", after["error_message"]
    # the given-up run was not rejoined after the reconnect: its token would be refused
    assert all(r["event"] != "phx_join" for r in lightning.rejections), lightning.rejections
    assert pool.stop() == 0
