"""Lightning plan → execution plan (reference §7.2), for each edge kind and transcript case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pool.lightning.plan import (
    Collections,
    PlanError,
    RunDefaults,
    attach_credentials,
    convert_plan,
)

CASES = json.loads((Path(__file__).parent / "transcripts" / "cases.json").read_text())
DEFAULTS = RunDefaults()


def job(job_id: str, body: str = "fn(s => s)", **extra: object) -> dict:
    return {"id": job_id, "body": body, "adaptor": "@openfn/language-common@3.3.4", **extra}


def steps_by_id(converted) -> dict:
    return {s["id"]: s for s in converted.plan["workflow"]["steps"]}


def test_transcript_case_with_trigger_credential_and_dataclip() -> None:
    case = CASES[0]
    converted = convert_plan(case["plan"], DEFAULTS, run_id="run-1")
    plan = converted.plan
    assert plan["id"] == "run-1"
    assert plan["options"] == {"start": "trigger-1"}
    assert [s["id"] for s in plan["workflow"]["steps"]] == [
        "trigger-1", "job-extract", "job-load"]
    trigger, extract, load = plan["workflow"]["steps"]
    assert trigger == {"id": "trigger-1", "next": {"job-extract": True}}
    assert extract == {
        "id": "job-extract", "name": "Extract", "expression": case["plan"]["jobs"][0]["body"],
        "adaptors": ["@openfn/language-common@3.3.4"], "configuration": "cred-demo",
        "next": {"job-load": {"condition": "on_job_success"}},
    }
    assert load["next"] == {} and load["configuration"] == {}
    assert converted.credential_ids == ["cred-demo"]
    assert converted.dataclip_id == "clip-demo"
    attach_credentials(plan, {"cred-demo": case["credentials"]["cred-demo"]})
    assert steps_by_id(converted)["job-extract"]["configuration"] == {
        "username": "demo", "password": "pw-demo"}


def test_transcript_case_without_triggers_starts_at_the_first_job() -> None:
    converted = convert_plan(CASES[1]["plan"], DEFAULTS, run_id="r")
    assert converted.plan["options"]["start"] == "job-a"
    assert steps_by_id(converted)["job-a"]["next"] == {"job-b": {"condition": "on_job_failure"}}
    assert converted.dataclip_id is None and converted.credential_ids == []


def test_transcript_compile_crash_case_converts_unchanged_body() -> None:
    converted = convert_plan(CASES[2]["plan"], DEFAULTS, run_id="r")
    assert steps_by_id(converted)["job-x"]["expression"] == "fn(s => { return s; "


def test_trigger_edges_conditions_and_disabled_edges() -> None:
    plan = {
        "triggers": [{"id": "t"}],
        "jobs": [job("a"), job("b"), job("c"), job("d")],
        "edges": [
            {"source_trigger_id": "t", "target_job_id": "a", "condition": "always"},
            {"source_trigger_id": "t", "target_job_id": "b", "condition": None},
            {"source_trigger_id": "t", "target_job_id": "c", "condition": "state.x > 1"},
            {"source_trigger_id": "t", "target_job_id": "d", "enabled": False},
        ],
    }
    assert steps_by_id(convert_plan(plan, DEFAULTS))["t"]["next"] == {
        "a": True, "b": True, "c": "state.x > 1"}


def test_job_edges_keep_conditions_and_mark_disabled() -> None:
    plan = {
        "jobs": [job("a"), job("b"), job("c"), job("d"), job("e"), job("f")],
        "edges": [
            {"source_job_id": "a", "target_job_id": "b", "condition": None, "enabled": True},
            {"source_job_id": "a", "target_job_id": "c", "condition": "on_job_failure"},
            {"source_job_id": "a", "target_job_id": "d", "condition": "always"},
            {"source_job_id": "a", "target_job_id": "e", "condition": "!state.errors",
             "enabled": False},
            {"source_job_id": "a", "target_job_id": "f", "enabled": False},
        ],
    }
    assert steps_by_id(convert_plan(plan, DEFAULTS))["a"]["next"] == {
        "b": True,
        "c": {"condition": "on_job_failure"},
        "d": {"condition": "always"},
        "e": {"condition": "!state.errors", "disabled": True},
        "f": {"disabled": True},
    }


def test_trigger_whose_only_edge_is_disabled_has_no_next() -> None:
    plan = {"triggers": [{"id": "t"}], "jobs": [job("a")],
            "edges": [{"source_trigger_id": "t", "target_job_id": "a", "enabled": False}]}
    assert steps_by_id(convert_plan(plan, DEFAULTS))["t"]["next"] == {}


def test_starting_node_globals_name_and_missing_ids() -> None:
    plan = {"id": "run-9", "name": "wf", "globals": "const x = 1;", "starting_node_id": "b",
            "jobs": [job("a"), {"body": "fn(s => s)"}, job("b")]}
    converted = convert_plan(plan, DEFAULTS)
    assert converted.plan["id"] == "run-9"
    assert converted.plan["options"] == {"start": "b"}
    assert converted.plan["workflow"]["name"] == "wf"
    assert converted.plan["workflow"]["globals"] == "const x = 1;"
    generated = converted.plan["workflow"]["steps"][1]
    assert len(generated["id"]) == 36 and generated["adaptors"] == []
    plan["globals"] = {"not": "a string"}
    assert "globals" not in convert_plan(plan, DEFAULTS).plan["workflow"]


def test_inline_credentials_need_no_fetch_and_ids_are_fetched_once() -> None:
    plan = {"jobs": [job("a", credential={"k": 1}), job("b", credential_id="c1"),
                     job("c", credential_id="c1")]}
    converted = convert_plan(plan, DEFAULTS)
    assert converted.credential_ids == ["c1"]
    attach_credentials(converted.plan, {"c1": None})
    steps = steps_by_id(converted)
    assert steps["a"]["configuration"] == {"k": 1}
    assert steps["b"]["configuration"] == {} and steps["c"]["configuration"] == {}


def test_run_options_map_to_limits_and_options_with_worker_defaults() -> None:
    defaults = RunDefaults(timeout_ms=1000, memory_mb=256, payload_mb=5, log_payload_mb=0.5,
                           state_props_to_remove=("configuration",))
    bare = convert_plan({"jobs": [job("a")]}, defaults)
    assert bare.limits == {"timeout_ms": 1000, "memory_mb": 256, "payload_mb": 5,
                           "log_payload_mb": 0.5}
    assert bare.options == {"state_props_to_remove": ["configuration"]}
    assert bare.output_dataclips is True
    options = {"run_timeout_ms": 100, "run_memory_limit_mb": 1024, "payload_limit_mb": 0,
               "log_payload_limit_mb": 2, "sanitize": "obfuscate", "output_dataclips": False,
               "job_log_level": "none"}
    converted = convert_plan({"jobs": [job("a")], "options": options}, defaults)
    assert converted.limits == {"timeout_ms": 100, "memory_mb": 1024, "payload_mb": 0,
                                "log_payload_mb": 2}
    assert converted.options == {"state_props_to_remove": ["configuration"],
                                 "job_log_level": "none", "sanitize": "obfuscate"}
    assert converted.output_dataclips is False


def test_collections_only_for_jobs_that_use_them() -> None:
    plan = {"project_id": "p1",
            "jobs": [job("a", "collections.get('x', '*')"), job("b")]}
    converted = convert_plan(plan, DEFAULTS, run_token="tok",
                             collections=Collections("http://lightning/collections", "0.8.1"))
    steps = steps_by_id(converted)
    assert steps["a"]["adaptors"] == ["@openfn/language-common@3.3.4",
                                      "@openfn/language-collections@0.8.1"]
    assert steps["b"]["adaptors"] == ["@openfn/language-common@3.3.4"]
    assert converted.plan["workflow"]["credentials"] == {
        "collections_token": "tok", "collections_endpoint": "http://lightning/collections",
        "project_id": "p1"}
    unused = convert_plan({"jobs": [job("b")]}, DEFAULTS, run_token="tok",
                          collections=Collections("http://x", "1"))
    assert "credentials" not in unused.plan["workflow"]


@pytest.mark.parametrize("plan, match", [
    ("nope", "not an object"),
    ({"jobs": []}, "no jobs"),
    ({"jobs": "x"}, "jobs must be a list"),
    ({"jobs": [{"id": "a"}]}, "job a has no body"),
    ({"jobs": [job("a", adaptor=3)]}, "adaptor must be a string"),
    ({"jobs": [job("a")], "edges": [{"source_job_id": "a"}]}, "has no target_job_id"),
    ({"jobs": [job("a")], "options": {"run_timeout_ms": "soon"}}, "run_timeout_ms"),
    ({"jobs": [job("a")], "options": {"job_log_level": "loud"}}, "job_log_level"),
    ({"jobs": [job("a")], "options": {"sanitize": "bleach"}}, "sanitize"),
    ({"jobs": [job("a")], "options": {"output_dataclips": "yes"}}, "output_dataclips"),
])
def test_malformed_plans_are_clear_errors(plan, match) -> None:
    with pytest.raises(PlanError, match=match):
        convert_plan(plan, DEFAULTS)
