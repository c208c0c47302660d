"""What a user sees is what ws-worker 1.25 shows for the same plan (issue 13, item 6).

Each case was seen to differ from ws-worker against OpenFn's own mock; the expected values are
ws-worker's (its transcripts in tests/lightning/transcripts, and the OpenFn/kit sources named in
each test). One pool and one dev server serve the module: each test enqueues its own run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pool.devserver.server import DevServer
from tests.supervisor.conftest import DEADLINE, Pool, job, plan, wait_run


@pytest.fixture(scope="module")
def lightning() -> Iterator[DevServer]:
    with DevServer() as dev:
        yield dev


@pytest.fixture(scope="module")
def pool(lightning: DevServer) -> Iterator[Pool]:
    started = Pool(lightning, "--size", "1")
    yield started
    try:
        assert started.stop() == 0
    finally:
        started.close()


def run_body(lightning: DevServer, body: str) -> dict[str, Any]:
    return wait_run(lightning, lightning.enqueue(plan(job(body, "job-x"))), DEADLINE)


def step_completes(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["payload"] for e in run["events"] if e["event"] == "step:complete"]


def test_a_syntax_error_at_the_end_has_ws_workers_column(lightning: DevServer,
                                                         pool: Pool) -> None:
    # the transcript's compile-crash case: ws-worker says (1:19) (OpenFn's compiler drops one
    # trailing space before parsing, compiler/src/parse.ts)
    run = run_body(lightning, "fn(s => { return s; ")
    assert (run["state"], run["error_type"]) == ("crashed", "CompileError")
    assert run["error_message"] == "job-x: Unexpected token (1:19)"


def test_lazy_state_misuse_is_worded_as_ws_worker_words_it(lightning: DevServer,
                                                           pool: Pool) -> None:
    # compiler/src/transforms/lazy-state.ts: `Lazy State Error: Must be inside an operation`,
    # with the `$`'s position; engine-multi prefixes the step id
    run = run_body(lightning, "const x = $.data;\nfn(s => s);")
    assert (run["state"], run["error_type"]) == ("crashed", "CompileError")
    assert run["error_message"] == "job-x: Lazy State Error: Must be inside an operation (1:10)"


def test_a_job_rejecting_with_a_non_error_has_an_empty_message(lightning: DevServer,
                                                              pool: Pool) -> None:
    # the runtime's JobError keeps message "" for a rejection that is not an Error and has no
    # message; ws-worker sends error.message as it is (api/reasons.ts)
    run = run_body(lightning, "fn(() => Promise.reject(42))")
    assert (run["state"], run["error_type"], run["error_message"]) == ("failed", "JobError", "")
    [step] = step_completes(run)
    assert (step["reason"], step["error_type"], step["error_message"]) == ("fail", "JobError", "")


def test_a_job_returning_undefined_ends_with_an_empty_state(lightning: DevServer,
                                                           pool: Pool) -> None:
    # ws-worker's step-complete sends `event.state || {}` as the output dataclip
    # (events/step-complete.ts), so the run's final dataclip is {} and not null
    run = run_body(lightning, "fn(() => undefined)")
    assert run["state"] == "success"
    [step] = step_completes(run)
    assert json.loads(step["output_dataclip"]) == {}
    assert run["final_state"] == {}
    assert run["final_dataclip_id"] == step["output_dataclip_id"]
    assert run["dataclips"][run["final_dataclip_id"]] == {}
