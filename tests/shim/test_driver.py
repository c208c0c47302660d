"""The Python driver's failure paths: a shim that cannot boot, a shim that dies mid-run."""

from __future__ import annotations

import os

import pytest

from pool.executor.environment import shim_env
from pool.executor.shim import SHIM_SCRIPT, Shim, ShimBootError, ShimExited
from tests.shim.conftest import COMMON, DEADLINE, NODE, REPO_DIR, start_shim


def test_missing_node_is_a_boot_error() -> None:
    shim = Shim("/nonexistent/node", 200, {"PATH": "/usr/bin"}, REPO_DIR)
    with pytest.raises(ShimBootError, match="node binary not found"):
        shim.start()


def test_node_without_vm_modules_exits_3_with_the_reason(shim_home: str) -> None:
    shim = Shim(NODE, 200, shim_env(os.environ, [], shim_home), REPO_DIR)
    shim.argv = lambda: [NODE, "--no-warnings", SHIM_SCRIPT, REPO_DIR]  # type: ignore[method-assign]
    shim.start()
    with pytest.raises(ShimBootError, match="SourceTextModule"):
        shim.wait_ready(DEADLINE)
    assert shim.returncode == 3
    shim.close()


def test_a_shim_that_exits_mid_run_raises_shim_exited(shim_home: str, adaptors: dict) -> None:
    shim = start_shim(shim_home)
    try:
        # the documented sandbox escape (DESIGN.md threat model): host Function via a host timer
        code = "fn(s => { setTimeout.constructor('return process')().exit(42); return s; })"
        shim.start_run({"run_id": "r", "plan": {"id": "r", "workflow": {"steps": [
            {"id": "a", "expression": code, "adaptors": [COMMON]}]}},
            "input": {}, "adaptors": {COMMON: adaptors[COMMON]}, "options": {}})
        with pytest.raises(ShimExited) as exited:
            while True:
                shim.next_event(DEADLINE)
        assert exited.value.returncode == 42
        assert exited.value.oom is False
    finally:
        shim.close()

