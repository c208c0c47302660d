"""``poolctl start`` runs Lightning's runs: many at once, workloops, credentials, dataclips."""

from __future__ import annotations

import json

from pool.devserver.server import DevServer
from tests.supervisor.conftest import (
    DEADLINE,
    HELLO_BODY,
    SLOW_BODY,
    events,
    job,
    job_lines,
    lifecycle,
    plan,
    wait_run,
    wait_until,
)

HELLO = job(HELLO_BODY)
SLOW = SLOW_BODY


def test_200_runs_at_size_4_all_succeed_with_the_exact_events(lightning: DevServer,
                                                              start_pool) -> None:
    pool = start_pool("--size", "4")
    ids = [lightning.enqueue(plan(HELLO)) for _ in range(200)]
    runs = [wait_run(lightning, run_id, DEADLINE * 2) for run_id in ids]
    assert [r["state"] for r in runs] == ["success"] * 200, lightning.rejections
    assert lightning.rejections == []
    first = events(runs[0])
    assert first[:2] == ["phx_join", "fetch:plan"] and first[-1] == "run:complete"
    assert lifecycle(runs[0]) == ["run:start", "step:start", "step:complete", "run:complete"]
    for run in runs:
        assert events(run) == first, run["id"]  # the same events, in the same order
        assert job_lines(run) == [["hello", 42]]
        assert run["final_state"] == {"data": {"n": 1}}
        assert run["final_dataclip_id"] is not None
    assert pool.stop() == 0


def test_a_credential_and_a_dataclip_reach_the_job(lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1")
    body = ('fn(state => { console.log(state.configuration.username, state.data.patients.length);'
            ' return { data: { user: state.configuration.username, '
            'n: state.data.patients.length } }; });')
    run_id = lightning.enqueue(
        plan(job(body, credential_id="cred-1"), dataclip_id="clip-1"),
        credentials={"cred-1": {"username": "ada", "password": "secret-pw"}},
        dataclips={"clip-1": {"data": {"patients": [1, 2, 3]}}})
    run = wait_run(lightning, run_id, DEADLINE)
    assert run["state"] == "success", lightning.rejections
    assert job_lines(run) == [["ada", 3]]
    assert run["final_state"] == {"data": {"user": "ada", "n": 3}}
    step_start = next(e for e in run["events"] if e["event"] == "step:start")
    assert step_start["payload"]["input_dataclip_id"] == "clip-1"
    # the credential is used by the job, never stored back in a dataclip
    assert "secret-pw" not in json.dumps(run["dataclips"])
    assert pool.stop() == 0
    assert "secret-pw" not in pool.output


def test_a_credential_or_dataclip_lightning_cannot_give_ends_the_run_as_an_exception(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1")
    lightning.reply_error_on("fetch:credential", {"errors": {"id": ["Credential not found!"]}})
    lightning.reply_error_on("fetch:dataclip", {"reason": "not_found"})
    cred_run = wait_run(lightning, lightning.enqueue(
        plan(job("fn(s => s)", credential_id="cred-1")),
        credentials={"cred-1": {"username": "ada"}}), DEADLINE)
    clip_run = wait_run(lightning, lightning.enqueue(
        plan(job("fn(s => s)"), dataclip_id="clip-1"), dataclips={"clip-1": {"data": {}}}),
        DEADLINE)
    assert (cred_run["state"], cred_run["error_type"]) == ("exception", "CredentialLoadError")
    assert cred_run["error_message"] == ('Failed to load credential cred-1: [fetch:credential] '
                                         '{"errors":{"id":["Credential not found!"]}}')
    assert (clip_run["state"], clip_run["error_type"]) == ("exception", "DataClipError")
    assert clip_run["error_message"] == ('Failed to load dataclip clip-1: [fetch:dataclip] '
                                         '{"reason":"not_found"}')
    for run in (cred_run, clip_run):  # no run:start: straight from claimed to exception
        assert "run:start" not in events(run) and events(run)[-1] == "run:complete"
    assert pool.stop() == 0


def test_a_strict_fast_lane_is_kept_free_for_its_own_queue(lightning: DevServer,
                                                            start_pool) -> None:
    pool = start_pool("--workloops", "fast_lane:1 manual:1")
    slow = [lightning.enqueue(plan(job(SLOW)), queue="manual") for _ in range(3)]
    fast = lightning.enqueue(plan(HELLO), queue="fast_lane")
    fast_run = wait_run(lightning, fast, DEADLINE)
    slow_runs = [wait_run(lightning, run_id, DEADLINE) for run_id in slow]
    assert fast_run["state"] == "success" and all(r["state"] == "success" for r in slow_runs)
    # the manual runs went one at a time through the manual slot: the fast lane never took one
    for before, after in zip(slow_runs, slow_runs[1:], strict=False):
        assert after["times"]["claimed"] >= before["times"]["completed"]
    # and the fast lane did not wait for the manual queue to empty
    assert fast_run["times"]["completed"] < slow_runs[-1]["times"]["claimed"]
    claims = [f["frame"][4] for f in lightning.frames
              if f["dir"] == "worker->lightning" and f["frame"][3] == "claim"]
    assert {tuple(c["queues"]) for c in claims} == {("fast_lane",), ("manual",)}
    join = next(f["frame"][4] for f in lightning.frames if f["dir"] == "worker->lightning"
                and f["frame"][2] == "worker:queue" and f["frame"][3] == "phx_join")
    assert join == {"capacity": 2, "queues": {"fast_lane": 1, "manual": 1}}
    assert pool.stop() == 0


def test_sigterm_lets_the_running_run_finish_and_exits_0(lightning: DevServer,
                                                         start_pool) -> None:
    pool = start_pool("--size", "1")
    run_id = lightning.enqueue(plan(job(SLOW)))
    wait_until(lambda: "step:start" in events(lightning.run(run_id)), "the run to start")
    assert pool.stop() == 0
    assert lightning.run(run_id)["state"] == "success"
    sent = [f["frame"] for f in lightning.frames if f["dir"] == "worker->lightning"]
    completed_at = next(i for i, f in enumerate(sent) if f[3] == "run:complete")
    assert [f for f in sent[completed_at:] if f[3] == "claim"] == []
