"""Collections as ws-worker gives them (lightning-protocol.md §7.2): with WORKER_COLLECTIONS_URL
set, a job whose body uses ``collections.`` gets @openfn/language-collections (``latest``
resolved once, at startup) and the run-scoped credentials; a job that does not gets neither."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pool.adaptors import AdaptorRepo
from pool.devserver.server import DevServer
from pool.settings import load_settings
from pool.supervisor.config import load_config
from tests.supervisor.conftest import REPO, job, plan, wait_run

COLLECTIONS = "@openfn/language-collections"
ENDPOINT = "http://127.0.0.1:9/collections"  # never called: the jobs only read the settings
# uses collections: reports what it was given (the output is a test's, so the token may show)
USES = ("fn(state => ({ data: { endpoint: state.configuration.collections_endpoint, "
        "project: state.configuration.project_id, token: state.configuration.collections_token, "
        "get: typeof collections.get } }));")
# does not: reports its configuration's keys and whether a `collections` namespace exists
PLAIN = ("fn(state => ({ data: { ...state.data, plain_keys: Object.keys(state.configuration), "
         "plain_namespace: typeof collections } }));")


def _installed_collections() -> str:
    """The version ``latest`` means offline: the highest one installed in the test repo."""
    versions = AdaptorRepo(REPO, offline=True).installed_versions(COLLECTIONS)
    assert versions, f"{COLLECTIONS} is not installed in {REPO}: run `make setup`"
    return versions[-1]


def _run_token(lightning: DevServer, run_id: str) -> str:
    """The token Lightning handed out with the claimed run (from the recorded claim reply)."""
    for entry in lightning.frames:
        frame = entry["frame"]
        if entry["dir"] == "lightning->worker" and isinstance(frame, list) \
                and frame[2] == "worker:queue" and frame[3] == "phx_reply":
            for run in (frame[4].get("response") or {}).get("runs") or []:
                if run["id"] == run_id:
                    return run["token"]
    raise AssertionError(f"no claim reply carried run {run_id}")


def _final_state(run: dict[str, Any]) -> dict[str, Any]:
    state = run["final_state"]
    return json.loads(state) if isinstance(state, str) else state


def _versions(run: dict[str, Any]) -> dict[str, Any]:
    return next(e["payload"]["versions"] for e in run["events"] if e["event"] == "run:start")


def test_latest_is_resolved_once_at_startup_through_the_adaptor_repo(lightning: DevServer,
                                                                      tmp_path: Path) -> None:
    # the sandbox is not what this checks (tests/security do): tmp_path below is 0700, which a
    # root pool's slot uids cannot reach
    env = {**lightning.worker_env(), "WORKER_REPO_DIR": REPO, "WORKER_SANDBOX": "none",
           "WORKER_COLLECTIONS_URL": ENDPOINT, "WORKER_ADAPTORS_OFFLINE": "true"}
    config = load_config(load_settings(env=env, command="start"))
    assert config.collections is not None
    assert config.collections.version == _installed_collections()
    assert config.collections.url == ENDPOINT
    pinned = load_config(load_settings(env={**env, "WORKER_COLLECTIONS_VERSION": "0.7.1"},
                                       command="start"))
    assert pinned.collections is not None and pinned.collections.version == "0.7.1"
    off = load_config(load_settings(env={k: v for k, v in env.items()
                                         if k != "WORKER_COLLECTIONS_URL"}, command="start"))
    assert off.collections is None
    # unresolvable (offline, none installed): a warning, and each run resolves the tag itself
    settings = load_settings(env={**env, "WORKER_REPO_DIR": str(tmp_path)}, command="start")
    unresolved = load_config(settings)
    assert unresolved.collections is not None and unresolved.collections.version == "latest"
    assert any("WORKER_COLLECTIONS_VERSION=latest: not resolved" in w for w in settings.warnings)


def test_only_the_job_that_uses_collections_gets_the_adaptor_and_the_run_token(
        lightning: DevServer, start_pool) -> None:
    version = _installed_collections()
    pool = start_pool("--size", "1", env={"WORKER_COLLECTIONS_URL": ENDPOINT})
    run_id = lightning.enqueue(plan(job(USES, "uses"), job(PLAIN, "plain"), project_id="proj-1"))
    run = wait_run(lightning, run_id)
    assert run["state"] == "success", (run["error_message"], pool.output[-3000:])
    assert lightning.rejections == []
    data = _final_state(run)["data"]
    assert data["endpoint"] == ENDPOINT
    assert data["project"] == "proj-1"
    assert data["token"] == _run_token(lightning, run_id)  # the run token, scoped to this run
    assert data["get"] == "function"  # the collections adaptor was loaded for that job
    # the job that does not use collections: no credentials, no adaptor
    assert data["plain_keys"] == []
    assert data["plain_namespace"] == "undefined"
    assert _versions(run)[COLLECTIONS] == [version]  # `latest` resolved at startup

    plain = wait_run(lightning, lightning.enqueue(plan(job(PLAIN, "plain"))))
    assert plain["state"] == "success"
    assert COLLECTIONS not in _versions(plain)
    assert _final_state(plain)["data"]["plain_keys"] == []
    assert pool.stop() == 0
