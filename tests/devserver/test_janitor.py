"""Lightning's janitor and what a worker meets when it comes back after a restart: runs nobody
reports become lost after their timeout plus the grace period, a joined run is kept for its
worker, a rejoin to a final run or with an expired token is refused, a stalled join never
joins."""

from __future__ import annotations

import time
import uuid

from pool.devserver.server import DevServer
from tests.devserver.conftest import CREDENTIALS, DATACLIPS, PLAN
from tests.devserver.raw_phoenix import RawPhoenix, ts

CLAIM = {"demand": 1, "worker_name": "pod-1", "queues": ["manual", "*"]}
# a 1 s run timeout plus a 1 s grace: lost two seconds after the claim
SHORT = {**PLAN, "options": {"run_timeout_ms": 1000}}


def _claim(client: RawPhoenix) -> dict:
    assert client.join("worker:queue", {})["status"] == "ok"
    reply = client.call("worker:queue", "claim", CLAIM)
    [run] = reply["response"]["runs"]
    return run


def _wait_state(server: DevServer, run_id: str, state: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while (run := server.run(run_id))["state"] != state:
        assert time.monotonic() < deadline, f"still {run['state']}, not {state}"
        time.sleep(0.05)
    return run


def test_the_janitor_marks_claimed_and_started_runs_lost(private_key_b64: str) -> None:
    with DevServer(private_key_b64=private_key_b64, grace_period_s=1,
                   janitor_interval_s=0.1) as server:
        claimed = server.enqueue(SHORT, credentials=CREDENTIALS, dataclips=DATACLIPS)
        started = server.enqueue(SHORT, credentials=CREDENTIALS, dataclips=DATACLIPS)
        client = RawPhoenix(server)
        first, second = _claim(client), client.call("worker:queue", "claim", CLAIM)
        assert first["id"] == claimed
        token = second["response"]["runs"][0]["token"]
        topic = f"run:{started}"
        assert client.join(topic, {"token": token})["status"] == "ok"
        assert client.call(topic, "run:start", {"timestamp": ts()})["status"] == "ok"
        step_id = str(uuid.uuid4())
        assert client.call(topic, "step:start", {"step_id": step_id, "job_id": "job-extract",
                                                 "timestamp": ts()})["status"] == "ok"
        assert server.run(started)["state"] == "started"  # not before its time
        lost_claimed = server.wait_for_run(claimed, 10)
        lost_started = server.wait_for_run(started, 10)
        assert (lost_claimed["state"], lost_claimed["error_type"]) == ("lost", "LostAfterClaim")
        assert (lost_started["state"], lost_started["error_type"]) == ("lost", "LostAfterStart")
        assert lost_started["steps"][step_id]["reason"] == "lost"
        # lost after the run's timeout plus the grace period, counted from the claim
        waited_s = (lost_claimed["times"]["completed"] - lost_claimed["times"]["claimed"]) / 1e6
        assert waited_s >= 2.0
        # a late worker can no longer complete it
        reply = client.call(topic, "run:complete", {"reason": "success", "error_type": None,
                                                    "error_message": None})
        assert reply["response"] == {"state": ["already in completed state"]}
        client.close()


def test_a_finished_run_is_not_lost_and_a_rejoin_to_it_is_refused(
        private_key_b64: str) -> None:
    with DevServer(private_key_b64=private_key_b64, grace_period_s=0.5,
                   janitor_interval_s=0.1) as server:
        run_id = server.enqueue(SHORT, credentials=CREDENTIALS, dataclips=DATACLIPS)
        client = RawPhoenix(server)
        token = _claim(client)["token"]
        topic = f"run:{run_id}"
        assert client.join(topic, {"token": token})["status"] == "ok"
        assert client.call(topic, "run:complete", {"reason": "crash", "error_type": "X",
                                                   "error_message": "m"})["status"] == "ok"
        other = RawPhoenix(server)  # a restarted worker, on a new socket, same token
        assert other.join(topic, {"token": token}) == {
            "status": "error", "response": {"reason": "already in completed state"}}
        assert "is final (crashed)" in server.rejections[-1]["reason"]
        time.sleep(2.0)  # past timeout + grace: the janitor leaves final runs alone
        assert server.run(run_id)["state"] == "crashed"
        other.close()
        client.close()


def test_a_joined_run_is_kept_for_its_worker_after_its_socket_dies(
        private_key_b64: str) -> None:
    with DevServer(private_key_b64=private_key_b64, join_timeout_s=0.3) as server:
        run_id = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS)
        client = RawPhoenix(server)
        token = _claim(client)["token"]
        assert client.join(f"run:{run_id}", {"token": token})["status"] == "ok"
        client.close()  # the worker dies
        time.sleep(1.0)  # well past the join timeout
        assert server.run(run_id)["state"] == "claimed"  # not rolled back: it was joined
        back = RawPhoenix(server)  # the restarted worker rejoins with the same token
        assert back.join(f"run:{run_id}", {"token": token})["status"] == "ok"
        assert back.call(f"run:{run_id}", "run:start", {"timestamp": ts()})["status"] == "ok"
        back.close()


def test_a_stalled_join_never_joins_when_its_socket_dies(private_key_b64: str) -> None:
    with DevServer(private_key_b64=private_key_b64, join_timeout_s=0.5) as server:
        run_id = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS)
        server.stall_on("phx_join", 2.0, run_id=run_id)
        client = RawPhoenix(server)
        token = _claim(client)["token"]
        client.send(f"run:{run_id}", "phx_join", {"token": token})
        time.sleep(0.2)
        client.close()  # dies while its join waits unhandled
        _wait_state(server, run_id, "available")  # rolled back after the join timeout
        time.sleep(2.0)  # the stalled join's time passes: it is dropped, never handled
        assert server.run(run_id)["state"] == "available"
