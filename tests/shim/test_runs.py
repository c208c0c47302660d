"""Real jobs through one warm Node shim: edges, outcomes, state flow, compile errors, adaptors."""

from __future__ import annotations

import json

import pytest

from tests.shim.conftest import COMMON, HTTP, Runner, start_shim


def step(id: str, expression: str, next: object = None, **extra: object) -> dict:
    s = {"id": id, "expression": expression, "adaptors": [COMMON], **extra}
    if next is not None:
        s["next"] = next
    return s


OK = "fn(s => ({ ...s, data: { ...s.data, ran: (s.data.ran || []).concat(['%s']) } }))"
BOOM = "fn(s => { s.data.partial = 1; throw new Error('boom'); })"


@pytest.mark.parametrize(("condition", "after_success", "after_failure"), [
    ("on_job_success", True, False),
    ("on_job_failure", False, True),
    ("always", True, True),
    ("!state.errors", True, False),          # a JS expression over the upstream state
])
def test_edge_conditions(runner: Runner, condition: str, after_success: bool,
                         after_failure: bool) -> None:
    for first, expected in ((OK % "a", after_success), (BOOM, after_failure)):
        result = runner.run([step("a", first, {"b": {"condition": condition}}),
                             step("b", OK % "b")])
        assert result.ran() == (["a", "b"] if expected else ["a"]), (condition, first)


def test_disabled_edge_is_not_followed(runner: Runner) -> None:
    result = runner.run([step("a", OK % "a", {"b": {"condition": "always", "disabled": True}}),
                         step("b", OK % "b")])
    assert result.ran() == ["a"]
    assert result.reason == "success"
    assert result.steps()["a"]["next"] == []


def test_a_throwing_job_fails_and_later_steps_follow_their_edges(runner: Runner) -> None:
    result = runner.run([step("a", BOOM, {"b": "on_job_failure", "c": "on_job_success"}),
                         step("b", OK % "b"), step("c", OK % "c")])
    a = result.steps()["a"]
    assert (a["reason"], a["error_type"], a["error_message"]) == ("fail", "JobError", "boom")
    assert a["next"] == ["b"]
    assert json.loads(a["state"])["data"]["partial"] == 1  # written before the throw: kept
    b_start = result.of("step-start")[1]
    assert b_start["job_id"] == "b" and b_start["input_from"] == a["step_id"]
    # the fail was handled by an edge: the leaf succeeded, so the run did
    assert result.reason == "success"
    assert result.final["errors"]["a"]["message"] == "boom"
    assert result.final["data"]["ran"] == ["b"]


def test_a_failing_leaf_fails_the_run(runner: Runner) -> None:
    result = runner.run([step("a", OK % "a", "b"), step("b", BOOM)])
    assert (result.reason, result.complete["error_type"]) == ("fail", "JobError")
    assert result.final["data"]["ran"] == ["a"]


def test_syntax_error_is_a_compile_crash_with_position(runner: Runner) -> None:
    result = runner.run([step("a", "fn(s => s", name="My job")])
    assert [e["type"] for e in result.events if e["type"] != "log"] == ["run-start",
                                                                         "run-complete"]
    c = result.complete
    assert (c["reason"], c["error_type"]) == ("crash", "CompileError")
    assert c["error_message"].startswith("My job: ")
    assert c["error_message"].endswith("(1:9)")
    assert c["final_state"] is None
    assert "Error occurred during compilation" in result.log_text("RTE")


def test_lazy_state_misuse_is_a_compile_crash(runner: Runner) -> None:
    result = runner.run([step("a", "const x = $.data;\nfn(s => s);")])
    c = result.complete
    assert (c["reason"], c["error_type"]) == ("crash", "CompileError")
    assert c["error_message"].startswith("a: ")
    assert "(1:10)" in c["error_message"]
    assert result.of("step-start") == []


def test_reference_error_crashes_and_stops_the_workflow(runner: Runner) -> None:
    result = runner.run([step("a", "fn(s => nope.x)", {"b": "always"}), step("b", OK % "b")])
    assert result.ran() == ["a"]
    a = result.steps()["a"]
    assert (a["reason"], a["error_type"]) == ("crash", "ReferenceError")
    assert a["next"] == []
    assert (result.reason, result.complete["error_type"]) == ("crash", "RuntimeCrash")
    assert "nope is not defined" in result.complete["error_message"]
    assert result.complete["final_state"] is None


def test_process_is_not_reachable_from_a_job(runner: Runner) -> None:
    result = runner.run([step("a", "fn(s => { s.data.home = process.env.HOME; return s; })")])
    assert result.reason == "crash"
    assert "process is not defined" in result.complete["error_message"]
    kinds = runner.run([step("a", "fn(s => ({ data: { t: typeof process } }))")])
    assert kinds.final == {"data": {"t": "undefined"}}


def test_a_job_returning_a_non_object(runner: Runner) -> None:
    result = runner.run([step("a", "fn(() => 42)", "b"),
                         step("b", "fn(s => ({ data: { got: s } }))")])
    assert result.reason == "success"
    assert result.steps()["a"]["state"] == "42"
    # the runtime assembles a fresh state for the next step from a non-object input
    assert result.final == {"data": {"got": {"data": {}, "configuration": {}}}}


def test_a_job_returning_nothing_ends_with_no_state(runner: Runner) -> None:
    result = runner.run([step("a", "fn(() => undefined)")])
    assert result.reason == "success"
    assert result.complete["final_state"] is None


def test_an_empty_body_runs_no_step_as_on_ws_worker(runner: Runner) -> None:
    # the runtime runs a step only when its expression is truthy (execute/step.ts), and
    # engine-multi compiles only such steps: ws-worker sends no step events for an empty body
    # and its input passes through as the final state
    result = runner.run([step("a", "")], input={})
    assert result.reason == "success"
    assert result.of("step-start") == [] and result.of("step-complete") == []
    assert result.final == {}
    # in a chain, the empty step passes its input on like a trigger
    chained = runner.run([step("a", OK % "a", "b"), step("b", "", "c"), step("c", OK % "c")])
    assert chained.ran() == ["a", "c"]
    assert chained.of("step-start")[1]["input_from"] == chained.steps()["a"]["step_id"]
    assert chained.final["data"]["ran"] == ["a", "c"]


@pytest.mark.parametrize("body", ["fn(() => Promise.reject(42))", "fn(() => { throw {} })"])
def test_a_non_error_rejection_fails_with_an_empty_message(runner: Runner, body: str) -> None:
    # the runtime's JobError has message "" when what was thrown has none; ws-worker reports
    # error.message as it is (api/reasons.ts)
    result = runner.run([step("a", body)])
    a = result.steps()["a"]
    assert (a["reason"], a["error_type"], a["error_message"]) == ("fail", "JobError", "")
    assert (result.reason, result.complete["error_type"],
            result.complete["error_message"]) == ("fail", "JobError", "")


def test_credentials_reach_the_job_and_leave_no_trace(runner: Runner) -> None:
    secret = "pw-Zx81"
    result = runner.run(
        [step("a", "fn(s => ({ ...s, data: { user: s.configuration.user, "
                   "len: s.configuration.password.length } }))",
              "b", configuration={"user": "demo", "password": secret}),
         step("b", "fn(s => ({ ...s, data: { ...s.data, cfg: s.configuration } }))")])
    assert result.reason == "success"
    assert result.final == {"data": {"user": "demo", "len": len(secret), "cfg": {}}}
    for event in result.of("step-complete"):
        assert secret not in event["state"]
        assert "configuration" not in json.loads(event["state"])


def test_then_chains_and_lazy_state_in_arguments(runner: Runner) -> None:
    code = ("fn(s => ({ ...s, data: { ...s.data, n: 1 } }))"
            ".then(s => ({ ...s, data: { ...s.data, n: s.data.n + 1 } }));\n"
            "fnIf($.data.n > 1, fn(s => ({ ...s, data: { ...s.data, big: true } })));\n"
            "fn(s => { throw new Error('caught'); }).catch((e, s) => ({ ...s, seen: e.message }));\n")
    result = runner.run([step("a", code)])
    assert result.reason == "success", result.complete
    assert result.final == {"data": {"n": 2, "big": True}, "seen": "caught"}


def test_multiple_leaves_are_keyed_by_step(runner: Runner) -> None:
    result = runner.run([step("a", OK % "a", {"b": "always", "c": "always"}),
                         step("b", OK % "b"), step("c", OK % "c")])
    assert result.reason == "success"
    assert set(result.final) == {"b", "c"}
    assert result.final["c"]["data"]["ran"] == ["a", "c"]


def test_unknown_start_is_a_validation_crash(runner: Runner) -> None:
    result = runner.run([step("a", OK % "a")], start="nope")
    assert (result.reason, result.complete["error_type"]) == ("crash", "ValidationError")
    missing = runner.run([step("a", OK % "a", "ghost")])
    assert (missing.reason, missing.complete["error_type"]) == ("crash", "ValidationError")
    assert "ghost" in missing.complete["error_message"]


def test_job_and_adaptor_logs_are_attributed(runner: Runner) -> None:
    result = runner.run([step("a", "fn(s => { console.log('from job', 7); return s; });\n"
                                   "log('from adaptor');")])
    assert result.reason == "success"
    job = [e for e in result.of("log") if e["source"] == "JOB"]
    assert job and job[0]["message"] == ["from job", 7]
    assert job[0]["step_id"] == result.of("step-start")[0]["step_id"]
    # common's log() writes to the host console, routed to ADA during the run
    assert "from adaptor" in result.log_text("ADA") + result.log_text("JOB")


def test_oversized_state_is_redacted(runner: Runner) -> None:
    result = runner.run([step("a", "fn(s => ({ data: { big: 'x'.repeat(2 * 1024 * 1024) }, "
                                   "keep: 1 }))")], payload_limit_mb=1)
    a = result.steps()["a"]
    assert a["redacted"] is True
    # only data is replaced; the flag is on the event, not in the state (engine-multi)
    assert json.loads(a["state"]) == {"data": "[REDACTED]", "keep": 1}
    assert result.complete["redacted"] is True


def test_timers_left_by_a_run_are_cleared(runner: Runner) -> None:
    first = runner.run([step("a", "fn(s => { setInterval(() => console.log('tick'), 5); "
                                  "return s; })")])
    assert first.reason == "success"
    second = runner.run([step("a", "fn(s => new Promise(r => setTimeout(() => r(s), 100)))")])
    assert second.reason == "success"
    assert "tick" not in second.log_text()


def test_language_http_get_against_a_local_server(runner: Runner, http_server: str) -> None:
    result = runner.run([{"id": "h", "adaptors": [HTTP],
                          "expression": "get($.data.url + '/patients?x=1');",
                          "configuration": {"baseUrl": http_server}}],
                        input={"data": {"url": http_server}})
    assert result.reason == "success", result.complete
    assert result.final["data"] == {"path": "/patients?x=1", "ok": True}
    assert "response" not in result.final


def test_uncaught_async_error_crashes_the_run(shim_home: str, adaptors: dict) -> None:
    shim = start_shim(shim_home)
    try:
        runner = Runner(shim, adaptors)
        result = runner.run([step("a", "fn(s => { setTimeout(() => { throw new Error('late') }, 1); "
                                       "return new Promise(() => {}); })")])
        assert (result.reason, result.complete["error_type"]) == ("crash", "ExecutionError")
        assert result.complete["error_message"] == "late"
        assert [e["reason"] for e in result.of("step-complete")] == ["crash"]
    finally:
        shim.close()
