"""run:<id>: joins, fetches, and every event checked the way Lightning checks it."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from pool.devserver.server import DevServer
from pool.devserver.tokens import b64decode_loose
from tests.devserver.conftest import CREDENTIALS, DATACLIPS, PLAN, claim_and_join, enqueue_demo
from tests.devserver.raw_phoenix import RawPhoenix, new_id, parse_binary_reply, ts


class Worker:
    """A run's worth of hand-built events on one run channel."""

    def __init__(self, client: RawPhoenix, server: DevServer) -> None:
        self.client, self.server = client, server
        self.run_id = enqueue_demo(server)
        self.topic = claim_and_join(client, server, self.run_id)

    def send(self, event: str, payload: object) -> dict:
        return self.client.call(self.topic, event, payload)

    def log(self, **fields: object) -> dict:
        line = {"run_id": self.run_id, "message": ["hi"], "source": "JOB", "level": "info",
                "timestamp": ts(), **fields}
        return self.send("run:log", {k: v for k, v in line.items() if v is not None})

    def start_step(self, job_id: str = "job-extract", input_id: str | None = "clip-demo") -> str:
        step_id = new_id()
        payload = {"step_id": step_id, "job_id": job_id, "timestamp": ts()}
        if input_id:
            payload["input_dataclip_id"] = input_id
        assert self.send("step:start", payload) == {"status": "ok",
                                                    "response": {"step_id": step_id}}
        return step_id

    def complete_step(self, step_id: str, **fields: object) -> dict:
        body = {"step_id": step_id, "job_id": "job-extract", "output_dataclip_id": new_id(),
                "output_dataclip": json.dumps({"data": {"count": 3}}), "reason": "success",
                "error_type": None, "error_message": None, "mem": {"job": 1, "system": 2},
                "duration": 5, "thread_id": 1, "timestamp": ts(), **fields}
        return self.send("step:complete", {k: v for k, v in body.items() if v != "OMIT"})


@pytest.fixture
def worker(client: RawPhoenix, server: DevServer) -> Worker:
    return Worker(client, server)


def ok(reply: dict) -> object:
    assert reply["status"] == "ok", reply
    return reply["response"]


def test_a_full_valid_run_is_accepted_and_recorded(worker: Worker, server: DevServer) -> None:
    plan = ok(worker.send("fetch:plan", {}))
    assert plan["id"] == worker.run_id and plan["jobs"][0]["id"] == "job-extract"
    assert ok(worker.send("fetch:credential", {"id": "cred-demo"})) == \
        {"username": "demo", "password": "pw-demo"}          # empty values dropped
    assert ok(worker.log(source="RTE", message=["Memory limit: 500mb"]))["log_line_id"]
    assert ok(worker.send("run:start", {"versions": {"worker": "x"}, "timestamp": ts()})) is None
    first = worker.start_step()
    ok(worker.log(step_id=first, message=["patients:", 3, {"a": 1}]))
    ok(worker.send("run:batch_logs", {"run_id": worker.run_id, "logs": [
        {"message": ["a"], "source": "R/T", "level": "debug", "timestamp": ts(), "step_id": first},
        {"message": [None], "source": "R/T", "level": "success", "timestamp": ts()}]}))
    first_out = new_id()
    ok(worker.complete_step(first, output_dataclip_id=first_out))
    second = worker.start_step("job-load", input_id=first_out)
    second_out = new_id()
    ok(worker.complete_step(second, job_id="job-load", output_dataclip_id=second_out))
    assert ok(worker.send("run:complete", {
        "reason": "success", "error_type": None, "error_message": None, "timestamp": ts(),
        "final_state": {"data": {"count": 3}}, "final_dataclip_id": second_out})) is None
    leave_ref = worker.client.send(worker.topic, "phx_leave", {})
    assert worker.client.reply_to(leave_ref)["status"] == "ok"

    assert server.rejections == []
    run = server.wait_for_run(worker.run_id, timeout=5)
    assert (run["state"], run["reason"], run["final_dataclip_id"]) == ("success", "success",
                                                                      second_out)
    assert run["final_state"] == {"data": {"count": 3}}
    times = run["times"]
    assert times["enqueued"] <= times["claimed"] <= times["started"] <= times["completed"]
    assert run["steps"][first]["input_dataclip_id"] == "clip-demo"
    assert run["steps"][second]["reason"] == "success"
    assert run["dataclips"][first_out] == {"data": {"count": 3}}
    events = [e["event"] for e in run["events"]]
    assert events[0] == "phx_join" and events[-2:] == ["run:complete", "phx_leave"]
    assert all(e["reply"]["status"] == "ok" and e["time_us"] for e in run["events"])


def test_fetch_dataclip_replies_with_a_binary_frame(worker: Worker, server: DevServer) -> None:
    ref = worker.client.send(worker.topic, "fetch:dataclip", {"id": "clip-demo"})
    frame = worker.client.reply_to(ref)
    assert isinstance(frame, bytes)
    reply = parse_binary_reply(frame)
    assert (reply["ref"], reply["topic"], reply["status"]) == (ref, worker.topic, "ok")
    assert reply["join_ref"] == worker.client.join_refs[worker.topic]
    assert json.loads(reply["body"]) == {"data": {"patients": [1, 2, 3]}}
    assert server.frames[-1]["frame"]["binary"] is True


def test_unknown_credential_and_dataclip_are_errors(worker: Worker) -> None:
    assert worker.send("fetch:credential", {"id": "nope"}) == \
        {"status": "error", "response": {"errors": {"id": ["Credential not found!"]}}}
    assert worker.send("fetch:dataclip", {"id": "nope"})["status"] == "error"


def sign(server: DevServer, **claims: object) -> str:
    key = b64decode_loose(server.private_key_b64)
    return jwt.encode(claims, key, algorithm="RS256")


def test_run_join_checks_the_token(client: RawPhoenix, server: DevServer) -> None:
    run_id = enqueue_demo(server)
    now = int(time.time())
    good = {"iss": "Lightning", "id": run_id, "sub": f"run:{run_id}", "nbf": now, "exp": now + 60}
    bad_tokens = [
        "x.y.z", None,
        sign(server, **{**good, "iss": "someone"}),
        sign(server, **{**good, "sub": "run:other"}),
        sign(server, **{**good, "id": "other"}),
        sign(server, **{**good, "exp": now - 5}),
        sign(server, **{**good, "nbf": now + 60}),
        sign(server, **{k: v for k, v in good.items() if k != "sub"}),
        jwt.encode(good, "an-hmac-secret-that-is-long-enough-ok", algorithm="HS256"),
    ]
    for token in bad_tokens:
        assert client.join(f"run:{run_id}", {"token": token}) == \
            {"status": "error", "response": {"reason": "unauthorized"}}, token
    unknown = new_id()
    token = sign(server, **{**good, "id": unknown, "sub": f"run:{unknown}"})
    assert client.join(f"run:{unknown}", {"token": token})["response"] == {"reason": "not_found"}
    assert client.join(f"run:{run_id}", {"token": sign(server, **good)})["status"] == "ok"


def started_with_step(worker: Worker) -> str:
    ok(worker.send("run:start", {"timestamp": ts()}))
    return worker.start_step()


# Each case: a setup returning the event and payload to send, and the field the error names.
def bad_timestamp(w: Worker) -> tuple[str, dict]:
    return "run:start", {"timestamp": str(time.time_ns())}            # 19-digit ns


def float_timestamp(w: Worker) -> tuple[str, dict]:
    return "run:start", {"timestamp": time.time()}


def iso_timestamp(w: Worker) -> tuple[str, dict]:
    return "run:start", {"timestamp": "2026-01-01T00:00:00Z"}


def non_uuid_step(w: Worker) -> tuple[str, dict]:
    return "step:start", {"step_id": "step-1", "job_id": "job-extract", "timestamp": ts()}


def step_without_job(w: Worker) -> tuple[str, dict]:
    return "step:start", {"step_id": new_id(), "timestamp": ts()}


def step_unknown_job(w: Worker) -> tuple[str, dict]:
    return "step:start", {"step_id": new_id(), "job_id": "job-nope", "timestamp": ts()}


def step_unknown_input(w: Worker) -> tuple[str, dict]:
    return "step:start", {"step_id": new_id(), "job_id": "job-extract",
                          "input_dataclip_id": new_id(), "timestamp": ts()}


def log_without_message(w: Worker) -> tuple[str, dict]:
    return "run:log", {"source": "JOB", "level": "info", "timestamp": ts()}


def log_string_message(w: Worker) -> tuple[str, dict]:
    return "run:log", {"message": "hi", "source": "JOB", "level": "info", "timestamp": ts()}


def log_bad_level(w: Worker) -> tuple[str, dict]:
    return "run:log", {"message": ["hi"], "level": "verbose", "timestamp": ts()}


def log_long_source(w: Worker) -> tuple[str, dict]:
    return "run:log", {"message": ["hi"], "source": "TOOLONGSRC", "timestamp": ts()}


def log_without_timestamp(w: Worker) -> tuple[str, dict]:
    return "run:log", {"message": ["hi"], "source": "JOB", "level": "info"}


def log_unknown_step(w: Worker) -> tuple[str, dict]:
    return "run:log", {"message": ["hi"], "timestamp": ts(), "step_id": new_id()}


def batch_with_bad_line(w: Worker) -> tuple[str, dict]:
    return "run:batch_logs", {"logs": [{"message": ["ok"], "timestamp": ts()},
                                       {"message": ["x"], "timestamp": "yesterday"}]}


def complete_unknown_step(w: Worker) -> tuple[str, dict]:
    return "step:complete", {"step_id": new_id(), "reason": "success"}


def complete_bad_reason(w: Worker) -> tuple[str, dict]:
    return "step:complete", {"step_id": started_with_step(w), "reason": "cancel"}


def complete_success_with_error(w: Worker) -> tuple[str, dict]:
    return "step:complete", {"step_id": started_with_step(w), "reason": "success",
                             "error_type": "JobError", "error_message": None}


def complete_object_dataclip(w: Worker) -> tuple[str, dict]:
    return "step:complete", {"step_id": started_with_step(w), "reason": "success",
                             "output_dataclip_id": new_id(), "output_dataclip": {"data": {}}}


def complete_body_without_id(w: Worker) -> tuple[str, dict]:
    return "step:complete", {"step_id": started_with_step(w), "reason": "success",
                             "output_dataclip": "{}"}


def complete_non_uuid_dataclip(w: Worker) -> tuple[str, dict]:
    return "step:complete", {"step_id": started_with_step(w), "reason": "success",
                             "output_dataclip_id": "clip-1", "output_dataclip": "{}"}


def run_complete_extra_key(w: Worker) -> tuple[str, dict]:
    return "run:complete", {"reason": "success", "surprise": 1}


def run_complete_bad_reason(w: Worker) -> tuple[str, dict]:
    return "run:complete", {"reason": "ok"}


def run_complete_unknown_final(w: Worker) -> tuple[str, dict]:
    return "run:complete", {"reason": "success", "final_dataclip_id": new_id()}


def run_start_twice(w: Worker) -> tuple[str, dict]:
    ok(w.send("run:start", {"timestamp": ts()}))
    return "run:start", {"timestamp": ts()}


def unknown_event(w: Worker) -> tuple[str, dict]:
    return "run:explode", {}


@pytest.mark.parametrize(("case", "field"), [
    (bad_timestamp, "timestamp"), (float_timestamp, "timestamp"), (iso_timestamp, "timestamp"),
    (non_uuid_step, "step_id"), (step_without_job, "job_id"), (step_unknown_job, "job_id"),
    (step_unknown_input, "input_dataclip_id"), (log_without_message, "message"),
    (log_string_message, "message"), (log_bad_level, "level"), (log_long_source, "source"),
    (log_without_timestamp, "timestamp"), (log_unknown_step, "step_id"),
    (batch_with_bad_line, "logs"), (complete_unknown_step, "step_id"),
    (complete_bad_reason, "reason"), (complete_success_with_error, "error_type"),
    (complete_object_dataclip, "output_dataclip"), (complete_body_without_id, "output_dataclip_id"),
    (complete_non_uuid_dataclip, "output_dataclip_id"), (run_complete_extra_key, "keys"),
    (run_complete_bad_reason, "reason"), (run_complete_unknown_final, "final_dataclip_id"),
    (run_start_twice, "state"), (unknown_event, "reason"),
], ids=lambda value: getattr(value, "__name__", value))
def test_malformed_event_is_refused_and_recorded(worker: Worker, server: DevServer, case,
                                                 field: str) -> None:
    event, payload = case(worker)
    reply = worker.send(event, payload)
    assert reply["status"] == "error", reply
    assert field in reply["response"], reply
    assert server.rejections[-1]["event"] == event
    assert server.rejections[-1]["run_id"] == worker.run_id
    assert server.run(worker.run_id)["events"][-1]["reply"]["status"] == "error"


def test_nothing_is_accepted_after_run_complete(worker: Worker, server: DevServer) -> None:
    ok(worker.send("run:complete", {"reason": "crash", "error_type": "CompileError",
                                    "error_message": "job-x: Unexpected token"}))
    assert server.run(worker.run_id)["state"] == "crashed"   # claimed -> final is allowed
    already = {"status": "error", "response": {"state": ["already in completed state"]}}
    assert worker.send("run:complete", {"reason": "success"}) == already
    assert worker.log() == already
    assert worker.send("step:start", {"step_id": new_id(), "job_id": "job-extract"}) == already


def test_batch_logs_without_logs_crashes_the_run_channel(worker: Worker,
                                                         server: DevServer) -> None:
    join_ref = worker.client.join_refs[worker.topic]
    ref = worker.client.send(worker.topic, "run:batch_logs", {"run_id": worker.run_id})
    error = worker.client.wait_for(lambda f: isinstance(f, list) and f[3] == "phx_error")
    assert error == [join_ref, join_ref, worker.topic, "phx_error", {}]
    with pytest.raises(TimeoutError):
        worker.client.reply_to(ref, timeout=0.3)
    # the channel is gone until the worker rejoins with its token
    assert worker.log()["response"] == {"reason": "unmatched topic"}


def test_step_complete_without_dataclip_when_not_saved(client: RawPhoenix,
                                                       server: DevServer) -> None:
    plan = {**PLAN, "options": {"output_dataclips": False}}
    run_id = server.enqueue(plan, credentials=CREDENTIALS, dataclips=DATACLIPS)
    topic = claim_and_join(client, server, run_id)
    step_id = new_id()
    ok(client.call(topic, "step:start", {"step_id": step_id, "job_id": "job-extract"}))
    out = new_id()
    ok(client.call(topic, "step:complete", {"step_id": step_id, "reason": "fail",
                                            "error_type": "JobError", "error_message": "x",
                                            "output_dataclip_id": out}))
    assert server.run(run_id)["dataclips"][out] is None     # recorded, body wiped
