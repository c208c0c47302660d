"""Helpers for driving a real executor process (and its real Node shim) through the protocol."""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pool.executor.config import sandbox_message
from pool.executor.handle import ExecutorHandle
from pool.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
REPO = os.environ.get("WORKER_REPO_DIR") or str(ROOT / ".repo")
COMMON = "@openfn/language-common@3.3.4"
DEADLINE = 60.0  # generous: a run here takes well under a second; boots a few seconds

_ids = itertools.count()
# the default sandbox (auto: uid as root, else namespaces; WORKER_SANDBOX chooses another)
SANDBOX = sandbox_message(load_settings(command="execute"))


def requires_repo() -> None:
    if not (Path(REPO) / "node_modules" / "@openfn" / "language-common_3.3.4").is_dir():
        pytest.fail(f"{COMMON} is not installed in {REPO}: run `make setup`")


def init(isolation: str, **overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "node": "node", "repo_dir": REPO, "isolation": isolation,
        "limits": {"timeout_ms": 20_000, "memory_mb": 128, "payload_mb": 10,
                   "log_payload_mb": 1},
        "prewarm": [COMMON], "adaptors": {"offline": True}, "boot_timeout": 30,
        "recycle": {"runs": 1000, "jitter": 0, "rss_mb": 2000}, "sandbox": SANDBOX,
    }
    message.update(overrides)
    return message


@contextlib.contextmanager
def executor(isolation: str, env: dict[str, str] | None = None,
             **overrides: Any) -> Iterator[ExecutorHandle]:
    if isolation != "noop":
        requires_repo()
    handle = ExecutorHandle.spawn(init(isolation, **overrides), env=env)
    try:
        handle.ready = handle.wait_ready(DEADLINE)  # type: ignore[attr-defined]
        yield handle
    finally:
        handle.close()


def plan(*expressions: str, adaptors: list[str] | None = None) -> dict[str, Any]:
    """A linear workflow: one step per expression, each feeding the next."""
    ids = [f"job-{i}" for i in range(len(expressions))]
    steps = []
    for i, expression in enumerate(expressions):
        step: dict[str, Any] = {"id": ids[i], "name": ids[i], "expression": expression,
                                "adaptors": [COMMON] if adaptors is None else adaptors,
                                "configuration": {}}
        if i + 1 < len(ids):
            step["next"] = {ids[i + 1]: True}
        steps.append(step)
    return {"id": str(uuid.uuid4()), "workflow": {"steps": steps}, "options": {}}


@dataclass
class Result:
    events: list[dict[str, Any]] = field(default_factory=list)
    recycled: list[dict[str, Any]] = field(default_factory=list)
    ready: dict[str, Any] | None = None

    @property
    def complete(self) -> dict[str, Any]:
        return next(e for e in self.events if e["type"] == "run-complete")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def logs(self) -> list[str]:
        return [" ".join(map(str, e["message"])) for e in self.of("log")]


def run(handle: ExecutorHandle, *expressions: str, limits: dict[str, Any] | None = None,
        input: Any = None, adaptors: list[str] | None = None,
        deadline: float = DEADLINE) -> Result:
    """Send one run and collect everything up to the executor's next ``ready``."""
    run_id = f"run-{next(_ids)}"
    handle.run(run_id, plan(*expressions, adaptors=adaptors), input or {"data": {}}, limits)
    result = Result()
    while True:
        message = handle.recv(deadline)
        assert message is not None, f"no message within {deadline}s; got {result.events}"
        if message["type"] == "ready":
            result.ready = message
            return result
        if message["type"] == "recycled":
            result.recycled.append(message)
        else:
            assert message["run_id"] == run_id, message
            result.events.append(message)
