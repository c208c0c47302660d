"""Fixtures for the shim tests: one real Node shim for the session, real adaptors from the repo.

The Node binary comes from WORKER_NODE_BINARY (default ``node``) so ``make test-node24`` runs
the same tests on Node 24; the adaptor repo from WORKER_REPO_DIR (default <checkout>/.repo,
populated by ``poolctl install``). Adaptors are installed on demand if missing.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pool.adaptors import AdaptorRepo
from pool.bench.workloads import SlowHttpServer
from pool.executor.environment import shim_env
from pool.executor.shim import Shim

COMMON = "@openfn/language-common@3.3.4"
HTTP = "@openfn/language-http@7.2.10"
NODE = os.environ.get("WORKER_NODE_BINARY") or "node"
REPO_DIR = os.environ.get("WORKER_REPO_DIR") or str(Path(__file__).resolve().parents[2] / ".repo")
DEADLINE = 30.0  # seconds any one run may take before the test gives up (runs take < 2 s)


@pytest.fixture(scope="session")
def repo() -> AdaptorRepo:
    return AdaptorRepo(REPO_DIR)


@pytest.fixture(scope="session")
def adaptors(repo: AdaptorRepo) -> dict[str, dict[str, str]]:
    found = repo.ensure([COMMON, HTTP])
    return {spec: {"name": a.name, "version": a.version, "path": a.path}
            for spec, a in found.items()}


@pytest.fixture(scope="session")
def shim_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("shim-home"))


def start_shim(home: str, memory_mb: int = 300) -> Shim:
    shim = Shim(NODE, memory_mb, shim_env(os.environ, [], home), REPO_DIR)
    shim.start()
    shim.wait_ready(DEADLINE)
    return shim


@pytest.fixture(scope="session")
def shim(shim_home: str) -> Iterator[Shim]:
    """One warm shim reused by every test that does not break it."""
    s = start_shim(shim_home)
    yield s
    s.close()


class Runner:
    """Runs plans on a shim and returns their events, for assertions."""

    def __init__(self, shim: Shim, adaptors: dict[str, dict[str, str]]) -> None:
        self.shim = shim
        self.adaptors = adaptors

    def run(self, steps: list[dict[str, Any]], input: Any = None, start: str | None = None,
            **options: Any) -> Result:
        run_id = str(uuid.uuid4())
        steps = copy.deepcopy(steps)
        used = {a for s in steps for a in s.get("adaptors", [])}
        plan = {"id": run_id, "workflow": {"steps": steps},
                "options": {"start": start} if start else {}}
        self.shim.start_run({
            "run_id": run_id, "plan": plan, "input": {"data": {}} if input is None else input,
            "adaptors": {spec: self.adaptors[spec] for spec in used},
            "options": {"state_props_to_remove": ["configuration", "response"],
                        "payload_limit_mb": 10, "log_payload_limit_mb": 1, "cache_key": run_id,
                        **options},
        })
        events = []
        while True:
            event = self.shim.next_event(DEADLINE)
            assert event is not None, f"no event within {DEADLINE}s; got {events[-5:]}"
            events.append(event)
            if event["type"] == "run-complete":
                assert event["run_id"] == run_id
                return Result(events)


class Result:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.complete = events[-1]

    @property
    def reason(self) -> str:
        return self.complete["reason"]

    @property
    def final(self) -> Any:
        text = self.complete["final_state"]
        return None if text is None else json.loads(text)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def steps(self) -> dict[str, dict[str, Any]]:
        """step-complete events by job id (the last one if a job ran twice)."""
        return {e["job_id"]: e for e in self.of("step-complete")}

    def ran(self) -> list[str]:
        return [e["job_id"] for e in self.of("step-start")]

    def log_text(self, source: str | None = None) -> str:
        return "\n".join(json.dumps(e["message"]) for e in self.of("log")
                         if source is None or e["source"] == source)


@pytest.fixture
def runner(shim: Shim, adaptors: dict[str, dict[str, str]]) -> Runner:
    return Runner(shim, adaptors)


@pytest.fixture(scope="session")
def http_server() -> Iterator[str]:
    """A real HTTP server on loopback answering every GET with JSON naming the path."""
    with SlowHttpServer(delay_s=0) as server:
        yield server.url
