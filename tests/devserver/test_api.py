"""The HTTP dev API and the ``poolctl dev-server`` command."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from pool.devserver.server import DevServer
from tests.devserver.conftest import CREDENTIALS, DATACLIPS, PLAN, claim_and_join
from tests.devserver.raw_phoenix import RawPhoenix, ts


def call(server: DevServer, method: str, path: str, body: Any = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server.api_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_enqueue_list_get_and_wait(server: DevServer) -> None:
    status, body = call(server, "POST", "/api/runs", {
        "plan": PLAN, "credentials": CREDENTIALS, "dataclips": DATACLIPS, "queue": "fast_lane"})
    assert status == 201
    run_id = body["id"]
    status, runs = call(server, "GET", "/api/runs")
    assert status == 200 and [(r["id"], r["state"], r["queue"]) for r in runs] == \
        [(run_id, "available", "fast_lane")]
    assert call(server, "GET", f"/api/runs/{run_id}/wait?timeout=0.2")[0] == 408

    client = RawPhoenix(server)
    topic = claim_and_join(client, server, run_id)
    waited: dict = {}
    waiter = threading.Thread(target=lambda: waited.update(
        result=call(server, "GET", f"/api/runs/{run_id}/wait?timeout=20")))
    waiter.start()
    assert client.call(topic, "run:complete", {"reason": "fail", "error_type": "JobError",
                                               "error_message": "boom", "timestamp": ts()}
                       )["status"] == "ok"
    waiter.join(timeout=25)
    status, run = waited["result"]
    assert status == 200 and (run["state"], run["error_type"]) == ("failed", "JobError")
    assert call(server, "GET", f"/api/runs/{run_id}")[1]["times"]["completed"] is not None
    client.close()


@pytest.mark.parametrize(("request_body", "reason"), [
    ({"plan": {"jobs": []}}, "at least one job"),
    ({"plan": {"jobs": [{"id": "a", "adaptor": "@openfn/language-common@3.3.4"}]}}, "'body'"),
    ({"plan": {"jobs": [{"id": "a", "body": "fn(s => s)"}]}}, "'adaptor'"),
    ({"plan": {**PLAN, "starting_node_id": "nowhere"}, "credentials": CREDENTIALS,
      "dataclips": DATACLIPS}, "starting_node_id"),
    ({"plan": {**PLAN, "edges": [{"source_job_id": "job-load", "target_job_id": "ghost"}]},
      "credentials": CREDENTIALS, "dataclips": DATACLIPS}, "target_job_id"),
    ({"plan": PLAN, "dataclips": DATACLIPS}, "credential_id 'cred-demo'"),
    ({"plan": PLAN, "credentials": CREDENTIALS}, "dataclip_id 'clip-demo'"),
    ({"plan": {"jobs": [{"body": "x", "adaptor": "y"}]}, "queue": "a b"}, "queue"),
])
def test_invalid_plan_is_422_with_the_reason(server: DevServer, request_body: dict,
                                             reason: str) -> None:
    status, body = call(server, "POST", "/api/runs", request_body)
    assert status == 422
    assert reason in body["error"]
    assert server.runs() == []


def test_malformed_requests_are_400_or_404(server: DevServer) -> None:
    assert call(server, "POST", "/api/runs", raw=b"{nope")[0] == 400
    assert call(server, "POST", "/api/runs", {"no": "plan"})[0] == 400
    assert call(server, "GET", "/api/runs/unknown")[0] == 404
    assert call(server, "POST", "/api/faults", {"kind": "meteor"})[0] == 400
    assert call(server, "POST", "/api/faults", {"kind": "hold_reply_on", "event": "claim",
                                                "seconds": -1})[0] == 400


def test_ids_of_any_form_are_kept_and_missing_ones_generated(server: DevServer) -> None:
    plan = {"jobs": [{"adaptor": "@openfn/language-common@3.3.4", "body": "fn(s => s)"},
                     {"id": "Job Two!", "adaptor": "@openfn/language-common@3.3.4",
                      "body": "fn(s => s)"}]}
    run_id = server.enqueue(plan)
    jobs = server.run(run_id)["plan"]["jobs"]
    assert jobs[0]["id"] and jobs[1]["id"] == "Job Two!"


def test_faults_over_http(server: DevServer) -> None:
    assert call(server, "POST", "/api/faults", {"kind": "reply_error_on", "event": "claim",
                                                "response": "nope"}) == (200, {"ok": True})
    client = RawPhoenix(server)
    client.join("worker:queue", {})
    assert client.call("worker:queue", "claim", {"demand": 1, "worker_name": None}) == \
        {"status": "error", "response": "nope"}
    assert call(server, "GET", "/api/health")[1]["workers"] == 1
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dev_server_command_prints_the_worker_env_and_stops_cleanly() -> None:
    port, api_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pool.cli", "dev-server", "--port", str(port),
         "--api-port", str(api_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        out = "".join(lines)
        assert f"WORKER_LIGHTNING_SERVICE_URL=ws://127.0.0.1:{port}/worker" in out
        assert "WORKER_SECRET=" in out and "WORKER_LIGHTNING_PUBLIC_KEY=" in out
        assert f"curl -s -X POST http://127.0.0.1:{api_port}/api/runs" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/health", timeout=10) as r:
            assert json.loads(r.read())["ok"] is True
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err


def test_rotate_secret_over_http(server: DevServer) -> None:
    new = "a-new-worker-secret-long-enough-for-hs256"
    assert call(server, "POST", "/api/faults", {"kind": "rotate_secret", "secret": new}) == \
        (200, {"ok": True})
    assert server.secret == new and server.worker_env()["WORKER_SECRET"] == new
    status, body = call(server, "POST", "/api/faults", {"kind": "rotate_secret"})
    assert status == 400 and "the new WORKER_SECRET" in body["error"]
