"""Run channels over real loopback sockets against the DevServer: a whole run's events,
fetches (the dataclip as a binary frame), refusals, timeouts, and surviving a dropped socket."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from pool.lightning.payloads import RunEvents
from pool.lightning.phoenix import LightningError, Reply
from pool.lightning.plan import RunDefaults, attach_credentials, convert_plan
from pool.lightning.queue_channel import QueueChannel
from pool.lightning.run_channel import RunChannel
from pool.lightning.workloops import default_workloops
from tests.lightning.conftest import CREDENTIALS, DATACLIPS, DEADLINE, PLAN, wait_until

T0 = 1795609291000000


def claimed_run(server, sock, **channel_options: Any) -> RunChannel:
    """Enqueue the demo run, claim it on ``sock`` and join its channel."""
    run_id = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS, wakeup=False)
    queue = QueueChannel(sock, default_workloops(1))
    assert queue.join().wait(DEADLINE).ok
    [claimed] = queue.claim(1, None, ["manual", "*"]).result(DEADLINE)
    assert claimed.id == run_id
    run = RunChannel(sock, claimed.id, claimed.token, **channel_options)
    reply = run.join().wait(DEADLINE)
    assert reply.ok, reply
    return run


def executor_run(step1: str, step2: str) -> list[dict[str, Any]]:
    """What an executor reports for the demo plan: extract → load."""
    return [
        {"type": "run-start", "versions": {"node": "20.1.0", "runtime": "1.9.5",
                                           "compiler": "0.1.0",
                                           "@openfn/language-common": ["3.3.4"]},
         "time_us": T0},
        {"type": "log", "step_id": None, "level": "info", "source": "R/T",
         "message": ["Starting step Extract"], "time_us": T0 + 1},
        {"type": "step-start", "step_id": step1, "job_id": "job-extract", "input_from": None,
         "time_us": T0 + 2},
        {"type": "log", "step_id": step1, "level": "info", "source": "JOB",
         "message": ["patients:", 3], "time_us": T0 + 3},
        {"type": "step-complete", "step_id": step1, "job_id": "job-extract",
         "reason": "success", "error_type": None, "error_message": None,
         "state": json.dumps({"data": {"count": 3}}), "duration_ms": 5,
         "mem": {"job": 1000, "system": 2000}, "next": ["job-load"], "time_us": T0 + 4},
        {"type": "step-start", "step_id": step2, "job_id": "job-load", "input_from": step1,
         "time_us": T0 + 5},
        {"type": "step-complete", "step_id": step2, "job_id": "job-load",
         "reason": "success", "error_type": None, "error_message": None,
         "state": json.dumps({"data": {"count": 3}}), "duration_ms": 2,
         "mem": {"job": 1000, "system": 2000}, "next": [], "time_us": T0 + 6},
        {"type": "run-complete", "reason": "success", "error_type": None,
         "error_message": None, "final_state": json.dumps({"data": {"count": 3}}),
         "time_us": T0 + 7},
    ]


def report(run: RunChannel, ledger: RunEvents, messages: list[dict], batch: bool = False
           ) -> list[tuple[str, Reply]]:
    """Send each event in order, awaiting its reply before the next (as the supervisor will)."""
    replies = []
    events = ledger.preamble()
    for message in messages:
        events += ledger.on_message({"run_id": run.run_id, **message})
    logs: list[dict] = []
    for i, (event, payload) in enumerate(events):
        if batch and event == "run:log":
            logs.append(payload)
            if i + 1 < len(events) and events[i + 1][0] == "run:log":
                continue
            replies.append(("run:batch_logs", run.send_logs(logs).wait(DEADLINE)))
            logs = []
            continue
        replies.append((event, run.send(event, payload).wait(DEADLINE)))
    return replies


@pytest.mark.parametrize("batch", [False, True])
def test_a_whole_run_is_accepted_by_the_dev_server(server, connect, batch) -> None:
    run = claimed_run(server, connect())
    converted = convert_plan(run.fetch_plan().result(DEADLINE), RunDefaults(),
                             run_id=run.run_id)
    assert converted.dataclip_id == "clip-demo"
    state = run.fetch_dataclip(converted.dataclip_id).result(DEADLINE)
    assert state == DATACLIPS["clip-demo"]
    assert any(f["dir"] == "lightning->worker" and isinstance(f["frame"], dict)
               and f["frame"].get("binary") for f in server.frames), "dataclip not binary"
    credentials = {cid: run.fetch_credential(cid).result(DEADLINE)
                   for cid in converted.credential_ids}
    attach_credentials(converted.plan, credentials)
    assert converted.plan["workflow"]["steps"][1]["configuration"] == CREDENTIALS["cred-demo"]

    step1, step2 = str(uuid.uuid4()), str(uuid.uuid4())
    ledger = RunEvents(run.run_id, converted.limits, converted.output_dataclips,
                       converted.dataclip_id)
    replies = report(run, ledger, executor_run(step1, step2), batch=batch)
    assert [(e, r.status) for e, r in replies if not r.ok] == []
    assert server.rejections == []
    assert run.leave().wait(DEADLINE).ok

    done = server.run(run.run_id)
    assert done["state"] == "success"
    assert done["steps"][step1]["input_dataclip_id"] == "clip-demo"
    second_input = done["steps"][step2]["input_dataclip_id"]
    assert second_input == done["steps"][step1]["output_dataclip_id"]
    assert done["final_dataclip_id"] == done["steps"][step2]["output_dataclip_id"]
    sent = [e["event"] for e in done["events"]]
    assert sent.index("run:start") < sent.index("step:start") < sent.index("run:complete")


def test_failed_fetches_read_like_ws_worker(server, connect) -> None:
    run = claimed_run(server, connect())
    with pytest.raises(LightningError) as missing:
        run.fetch_credential("nope").result(DEADLINE)
    assert str(missing.value) == \
        '[fetch:credential] {"errors":{"id":["Credential not found!"]}}'
    server.reply_error_on("fetch:plan", "injected", run_id=run.run_id)
    with pytest.raises(LightningError, match=r"^\[fetch:plan\] injected$"):
        run.fetch_plan().result(DEADLINE)
    server.hold_reply_on("fetch:dataclip", 3, run_id=run.run_id)
    with pytest.raises(LightningError, match=r"^\[fetch:dataclip\] timeout$"):
        run.channel.push("fetch:dataclip", {"id": "clip-demo"}, timeout=0.2).result(DEADLINE)


def variants(step_id: str, run_id: str) -> list[tuple[str, dict, str]]:
    """(event, payload, the field Lightning objects to) for payloads a careless worker sends."""
    log = {"run_id": run_id, "message": ["x"], "source": "JOB", "level": "info",
           "timestamp": str(T0)}
    done = {"step_id": step_id, "job_id": "job-extract", "reason": "success",
            "error_type": None, "error_message": None, "timestamp": str(T0)}
    return [
        ("run:log", {**log, "timestamp": 1795609291.5}, "timestamp"),
        ("run:log", {**log, "timestamp": "2026-11-26T10:00:00Z"}, "timestamp"),
        ("run:log", {**log, "timestamp": "1795609291000000000"}, "timestamp"),
        ("run:log", {**log, "message": None}, "message"),
        ("run:log", {**log, "source": "TOOLONGSRC"}, "source"),
        ("run:log", {**log, "level": "verbose"}, "level"),
        ("run:log", {**log, "step_id": str(uuid.uuid4())}, "step_id"),
        ("step:start", {"step_id": str(uuid.uuid4()), "timestamp": str(T0)}, "job_id"),
        ("step:start", {"step_id": "step-1", "job_id": "job-load"}, "step_id"),
        ("step:start", {"step_id": str(uuid.uuid4()), "job_id": "job-nope"}, "job_id"),
        ("step:complete", {**done, "step_id": str(uuid.uuid4())}, "step_id"),
        ("step:complete", {**done, "output_dataclip_id": str(uuid.uuid4()),
                           "output_dataclip": {"data": 1}}, "output_dataclip"),
        ("step:complete", {**done, "reason": "cancel"}, "reason"),
        ("step:complete", {**done, "error_type": "JobError"}, "error_type"),
        ("run:complete", {"reason": "success", "error_type": None, "error_message": None,
                          "extra": 1}, "keys"),
    ]


def test_each_malformed_payload_is_refused_with_a_clear_error(server, connect) -> None:
    run = claimed_run(server, connect())
    assert run.send("run:start", {"versions": {}, "timestamp": str(T0)}).wait(DEADLINE).ok
    step_id = str(uuid.uuid4())
    assert run.send("step:start", {"step_id": step_id, "job_id": "job-extract",
                                   "timestamp": str(T0)}).wait(DEADLINE).ok
    for event, payload, field in variants(step_id, run.run_id):
        reply = run.send(event, payload).wait(DEADLINE)
        assert reply.status == "error", (event, payload)
        assert field in json.dumps(reply.response), (event, field, reply.response)
    assert len(server.rejections) == len(variants(step_id, run.run_id))
    ok = run.send("run:complete", {"reason": "crash", "error_type": "X", "error_message": "y"})
    assert ok.wait(DEADLINE).ok
    late = run.send("run:log", {"run_id": run.run_id, "message": ["late"], "source": "JOB",
                                "level": "info", "timestamp": str(T0)})
    with pytest.raises(LightningError, match="already in completed state"):
        late.result(DEADLINE)


def test_a_refused_join_is_logged_and_reported(server, connect, caplog) -> None:
    sock = connect()
    run_id = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS, wakeup=False)
    run = RunChannel(sock, run_id, "forged.token.value")
    reply = run.join().wait(DEADLINE)
    assert reply == Reply("error", {"reason": "unauthorized"})
    assert f'Lightning refused to join run:{run_id}: [phx_join] {{"reason":"unauthorized"}}' \
        in caplog.text
    assert run.leave().wait(DEADLINE).ok
    refused = run.fetch_plan().wait(DEADLINE)  # after leaving: refused locally, not sent
    assert refused == Reply("error", {"reason": "channel not joined"})


def test_dropped_socket_reconnects_rejoins_and_flushes_pending_pushes(server, connect) -> None:
    rejoins: list[Reply] = []
    sock = connect()
    run = claimed_run(server, sock, on_join=lambda reply, again: again and rejoins.append(reply))
    assert run.send("run:start", {"versions": {}, "timestamp": str(T0)}).wait(DEADLINE).ok
    step_id = str(uuid.uuid4())

    # a push in flight when the socket drops (Lightning never saw it) is sent again
    server.drop_socket_on("step:start", run_id=run.run_id)
    started = run.send("step:start", {"step_id": step_id, "job_id": "job-extract",
                                      "timestamp": str(T0)})
    assert started.wait(DEADLINE) == Reply("ok", {"step_id": step_id})

    # pushes made while the socket is down are buffered and flushed after the rejoin
    server.drop_sockets()
    wait_until(lambda: not sock.is_open, "the drop to be noticed")
    logs = [run.send("run:log", {"run_id": run.run_id, "message": [f"line {i}"],
                                 "source": "JOB", "level": "info", "timestamp": str(T0 + i),
                                 "step_id": step_id}) for i in range(3)]
    assert [push.wait(DEADLINE).status for push in logs] == ["ok", "ok", "ok"]
    assert len(server.connections) == 3
    assert len(rejoins) == 2 and all(reply.ok for reply in rejoins)

    joins = [f["frame"] for f in server.frames if f["dir"] == "worker->lightning"
             and f["frame"][2:4] == [f"run:{run.run_id}", "phx_join"]]
    assert len(joins) == 3 and all(j[4] == joins[0][4] for j in joins)  # same token each time
    recorded = [e["payload"]["message"] for e in server.run(run.run_id)["events"]
                if e["event"] == "run:log"]
    assert recorded == [["line 0"], ["line 1"], ["line 2"]]
    assert server.rejections[0]["reason"] == "injected fault: socket dropped before the reply"
    assert len(server.rejections) == 1


def test_a_push_buffered_too_long_times_out(server, connect) -> None:
    sock = connect(reconnect_delays=(30,))
    run = claimed_run(server, sock)
    server.drop_sockets()
    wait_until(lambda: not sock.is_open, "the drop to be noticed")
    push = run.channel.push("run:log", {"message": ["x"]}, timeout=0.1)
    assert push.wait(DEADLINE) == Reply("timeout")


def test_a_join_that_times_out_is_retried(server, connect, caplog) -> None:
    attempts: list[Reply] = []
    sock = connect()
    run_id = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS, wakeup=False)
    queue = QueueChannel(sock, default_workloops(1))
    assert queue.join().wait(DEADLINE).ok
    [claimed] = queue.claim(1, None, ["*"]).result(DEADLINE)
    server.hold_reply_on("phx_join", 1.0, run_id=run_id)
    run = RunChannel(sock, run_id, claimed.token, timeout=0.3,
                     on_join=lambda reply, _again: attempts.append(reply))
    assert run.join().wait(DEADLINE) == Reply("timeout")
    wait_until(lambda: f"joining run:{run_id} timed out" in caplog.text, "the log line")
    wait_until(lambda: any(reply.ok for reply in attempts), "a successful retry")
    assert run.channel.push("fetch:plan", {}, timeout=DEADLINE).result(DEADLINE)["id"] == run_id


def test_a_timed_out_join_answered_late_does_not_close_the_channel(server, connect) -> None:
    """Lightning sits on a join past its timeout, then handles it and the leave that followed:
    the late reply and the phx_close of that abandoned join must not end the channel."""
    attempts: list[Reply] = []
    sock = connect(rejoin_delays=(1.5,))
    run_id = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS, wakeup=False)
    queue = QueueChannel(sock, default_workloops(1))
    assert queue.join().wait(DEADLINE).ok
    [claimed] = queue.claim(1, None, ["*"]).result(DEADLINE)
    server.stall_on("phx_join", 1.0, run_id=run_id)  # handled (with its leave) at 1 s
    run = RunChannel(sock, run_id, claimed.token, timeout=0.3,
                     on_join=lambda reply, _again: attempts.append(reply))
    assert run.join().wait(DEADLINE) == Reply("timeout")
    wait_until(lambda: any(reply.ok for reply in attempts), "the retry at 1.8 s to succeed")
    assert run.channel.push("fetch:plan", {}, timeout=DEADLINE).result(DEADLINE)["id"] == run_id
