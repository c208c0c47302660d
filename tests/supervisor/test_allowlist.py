"""WORKER_ADAPTOR_ALLOWLIST through Lightning: a run naming an adaptor the operator does not
permit fails with a clear error (as a failed install would); the pool carries on."""

from __future__ import annotations

from pool.devserver.server import DevServer
from tests.supervisor.conftest import DEADLINE, HELLO_BODY, job, plan, wait_run

HTTP = "@openfn/language-http@7.2.10"


def test_a_run_naming_an_adaptor_not_permitted_fails_and_the_next_runs(
        lightning: DevServer, start_pool) -> None:
    pool = start_pool("--size", "1", env={"WORKER_ADAPTOR_ALLOWLIST": "@openfn/language-http"})
    refused = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert (refused["state"], refused["error_type"]) == ("exception", "AutoinstallError")
    assert refused["error_message"] == (
        "Error installing @openfn/language-common@3.3.4: @openfn/language-common@3.3.4 is not "
        "permitted on this worker (WORKER_ADAPTOR_ALLOWLIST: @openfn/language-http)")
    permitted = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY, adaptor=HTTP))))
    assert permitted["state"] == "success", permitted["error_message"]
    assert pool.stop() == 0


def test_prewarming_an_adaptor_not_permitted_is_refused_at_start(start_pool) -> None:
    pool = start_pool("--size", "1", "--prewarm", "@openfn/language-common@3.3.4",
                      env={"WORKER_ADAPTOR_ALLOWLIST": "@openfn/language-http"})
    assert pool.proc.wait(DEADLINE) == 2
    assert pool.output.strip().splitlines() == [
        "poolctl start: WORKER_PREWARM_ADAPTORS names @openfn/language-common@3.3.4, which "
        "WORKER_ADAPTOR_ALLOWLIST does not permit"]
