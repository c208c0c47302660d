"""conf/compose.yaml: a drop-in for ws-worker's service next to Lightning's compose file."""

from __future__ import annotations

from tests.conf.manifests import CONF, documents, one
from tests.conf.test_kubernetes import pool_container

# what a Lightning deployment's .env already holds for its worker (reference §13, DEPLOYMENT.md)
LIGHTNING_ENV = ("WORKER_SECRET", "WORKER_LIGHTNING_PUBLIC_KEY", "WORKER_CAPACITY",
                 "WORKER_MAX_RUN_DURATION_SECONDS", "WORKER_MAX_RUN_MEMORY_MB")


def worker() -> dict:
    (compose,) = documents(CONF / "compose.yaml")
    return compose["services"]["worker"]


def test_it_parses_and_replaces_the_worker_service_of_lightnings_compose() -> None:
    (compose,) = documents(CONF / "compose.yaml")
    service = worker()
    assert service["depends_on"] == {"web": {"condition": "service_healthy"}}
    assert service["env_file"] == [".env"]  # Lightning's own .env: nothing to copy over
    assert service["environment"]["WORKER_LIGHTNING_SERVICE_URL"] == "ws://web:4000/worker"
    for name in LIGHTNING_ENV:  # read from .env as they are, not overridden here
        assert name not in service["environment"]
    assert service["image"] == one("Deployment")["spec"]["template"]["spec"]["containers"][0][
        "image"]
    assert service["command"][:1] == ["start"]
    assert service["command"] == pool_container()["args"]
    declared = set(compose["volumes"])
    assert {v.split(":", 1)[0] for v in service["volumes"]} <= declared


def test_docker_waits_for_the_runs_and_grants_the_uid_sandbox_only() -> None:
    service = worker()
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > 300  # ws-worker's max run duration
    assert service["stop_signal"] == "SIGTERM"
    assert (service["cap_drop"], service["cap_add"]) == (["ALL"], ["SETUID", "SETGID", "KILL"])
    assert service["environment"]["WORKER_SANDBOX"] == "uid"
