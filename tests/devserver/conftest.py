"""Fixtures: a fresh dev server per test (random ports) and a raw Phoenix client on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pool.devserver.server import DevServer
from pool.devserver.tokens import generate_private_key_b64
from tests.devserver.raw_phoenix import RawPhoenix

# cases.json's first plan: trigger -> extract (credential, input dataclip) -> load
PLAN = {
    "triggers": [{"id": "trigger-1"}],
    "starting_node_id": "trigger-1",
    "dataclip_id": "clip-demo",
    "jobs": [
        {"id": "job-extract", "name": "Extract", "adaptor": "@openfn/language-common@3.3.4",
         "credential_id": "cred-demo", "body": "fn(s => s)"},
        {"id": "job-load", "name": "Load", "adaptor": "@openfn/language-common@3.3.4",
         "body": "fn(s => s)"},
    ],
    "edges": [
        {"id": "edge-1", "source_trigger_id": "trigger-1", "target_job_id": "job-extract",
         "condition": "always", "enabled": True},
        {"id": "edge-2", "source_job_id": "job-extract", "target_job_id": "job-load",
         "condition": "on_job_success", "enabled": True},
    ],
}
CREDENTIALS = {"cred-demo": {"username": "demo", "password": "pw-demo", "empty": ""}}
DATACLIPS = {"clip-demo": {"data": {"patients": [1, 2, 3]}}}


@pytest.fixture(scope="session")
def private_key_b64() -> str:
    """One RSA key for the session: generating one per test costs ~0.2 s each."""
    return generate_private_key_b64()


@pytest.fixture
def server(private_key_b64: str) -> Iterator[DevServer]:
    with DevServer(private_key_b64=private_key_b64) as dev:
        yield dev


@pytest.fixture
def client(server: DevServer) -> Iterator[RawPhoenix]:
    phx = RawPhoenix(server)
    yield phx
    phx.close()


def enqueue_demo(server: DevServer, queue: str = "manual") -> str:
    return server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS, queue=queue)


def claim_and_join(client: RawPhoenix, server: DevServer, run_id: str) -> str:
    """Join the queue, claim ``run_id`` (the only run), join its channel; return the topic."""
    assert client.join("worker:queue", {"capacity": 1, "queues": {"manual>*": 1}})["status"] == "ok"
    reply = client.call("worker:queue", "claim",
                        {"demand": 1, "worker_name": None, "queues": ["manual", "*"]})
    assert reply["status"] == "ok", reply
    [run] = reply["response"]["runs"]
    assert run["id"] == run_id
    topic = f"run:{run_id}"
    assert client.join(topic, {"token": run["token"]}) == {"status": "ok", "response": {}}
    return topic
