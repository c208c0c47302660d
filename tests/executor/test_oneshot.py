"""``execute_once``: the path ``poolctl execute`` takes — settings → a real executor → one run."""

from __future__ import annotations

import json

import pytest

from pool.executor.handle import ExecutorBootError
from pool.executor.oneshot import execute_once
from pool.settings import load_settings
from tests.executor.conftest import REPO, plan, requires_repo


def settings(**env: str):
    return load_settings(env={"WORKER_REPO_DIR": REPO, "WORKER_ADAPTORS_OFFLINE": "true", **env},
                         command="execute")


@pytest.mark.parametrize("isolation", ["context", "cold"])
def test_one_run_through_an_executor_in_any_mode(isolation):
    requires_repo()
    events = []
    workflow = plan("fn(s => ({ data: { n: s.data.n + 1 } }))")
    del workflow["id"]
    done = execute_once(workflow, {"data": {"n": 1}},
                        settings(WORKER_ISOLATION=isolation, WORKER_MAX_RUN_MEMORY_MB="256"),
                        events.append)
    assert done["reason"] == "success" and json.loads(done["final_state"]) == {"data": {"n": 2}}
    assert [e["type"] for e in events if e["type"] != "log"] == [
        "run-start", "step-start", "step-complete", "run-complete"]


def test_boot_failure_surfaces_as_its_reason():
    with pytest.raises(ExecutorBootError, match="not found"):
        execute_once(plan("fn(s => s)"), {}, settings(WORKER_NODE_BINARY="/nonexistent/node"))
