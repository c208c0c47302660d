"""worker:queue: claims, queue preference, run tokens, work-available and the safety nets."""

from __future__ import annotations

import time

import jwt
import pytest

from pool.devserver.server import DevServer
from pool.devserver.tokens import b64decode_loose
from tests.devserver.conftest import PLAN, enqueue_demo
from tests.devserver.raw_phoenix import RawPhoenix

CLAIM = {"demand": 1, "worker_name": "pod-1", "queues": ["manual", "*"]}


def joined(client: RawPhoenix) -> RawPhoenix:
    assert client.join("worker:queue", {"capacity": 5, "queues": {"manual>*": 5}}) == \
        {"status": "ok", "response": {}}
    return client


def claimed_ids(client: RawPhoenix, **claim: object) -> list[str]:
    reply = client.call("worker:queue", "claim", {**CLAIM, **claim})
    assert reply["status"] == "ok", reply
    return [run["id"] for run in reply["response"]["runs"]]


def test_claim_without_runs_is_empty(client: RawPhoenix, server: DevServer) -> None:
    assert joined(client).call("worker:queue", "claim", CLAIM) == \
        {"status": "ok", "response": {"runs": []}}
    assert server.connections[0]["queues"] == {"manual>*": 5}


def test_claim_hands_out_up_to_demand_with_signed_run_tokens(client: RawPhoenix,
                                                             server: DevServer) -> None:
    ids = [server.enqueue(PLAN, wakeup=False, dataclips={"clip-demo": {}},
                          credentials={"cred-demo": {}}) for _ in range(3)]
    reply = joined(client).call("worker:queue", "claim", {**CLAIM, "demand": 2})
    runs = reply["response"]["runs"]
    assert [r["id"] for r in runs] == ids[:2]
    public_pem = b64decode_loose(server.public_key_b64)
    claims = jwt.decode(runs[0]["token"], public_pem, algorithms=["RS256"], issuer="Lightning")
    assert claims["id"] == ids[0] and claims["sub"] == f"run:{ids[0]}"
    assert claims["nbf"] <= time.time() < claims["exp"]
    first = server.run(ids[0])
    assert (first["state"], first["worker_name"]) == ("claimed", "pod-1")
    assert first["times"]["enqueued"] <= first["times"]["claimed"]
    assert server.run(ids[2])["state"] == "available"


def test_claim_honours_queue_preference(client: RawPhoenix, server: DevServer) -> None:
    manual = enqueue_demo(server, queue="manual")
    fast = enqueue_demo(server, queue="fast_lane")
    other = enqueue_demo(server, queue="other")
    joined(client)
    assert claimed_ids(client, queues=["fast_lane"], demand=3) == [fast]
    assert claimed_ids(client, queues=["fast_lane"]) == []
    # manual first, then anything
    later_manual = enqueue_demo(server, queue="manual")
    assert claimed_ids(client, queues=["manual", "*"], demand=2) == [manual, later_manual]
    assert claimed_ids(client, queues=["manual", "*"], demand=2) == [other]


def test_claim_without_worker_name_crashes_the_channel(client: RawPhoenix,
                                                       server: DevServer) -> None:
    enqueue_demo(server)
    joined(client)
    join_ref = client.join_refs["worker:queue"]
    ref = client.send("worker:queue", "claim", {"demand": 1, "queues": ["*"]})
    error = client.wait_for(lambda f: isinstance(f, list) and f[3] == "phx_error")
    assert error == [join_ref, join_ref, "worker:queue", "phx_error", {}]
    with pytest.raises(TimeoutError):
        client.reply_to(ref, timeout=0.5)   # Lightning never answers the crashing push
    assert "worker_name" in server.rejections[-1]["reason"]
    # the client rejoins and claims normally; the run was never handed out
    assert len(claimed_ids(joined(client))) == 1


def test_enqueue_pushes_work_available_to_joined_queue_channels(client: RawPhoenix,
                                                               server: DevServer) -> None:
    joined(client)
    enqueue_demo(server)
    push = client.wait_for(lambda f: isinstance(f, list) and f[3] == "work-available")
    assert push == [client.join_refs["worker:queue"], None, "worker:queue", "work-available", {}]


def test_claimed_run_not_joined_goes_back_to_available(private_key_b64: str) -> None:
    with DevServer(private_key_b64=private_key_b64, join_timeout_s=0.3) as server:
        run_id = enqueue_demo(server)
        client = joined(RawPhoenix(server))
        assert claimed_ids(client) == [run_id]
        # it comes back, announced by work-available, and can be claimed again
        client.wait_for(lambda f: isinstance(f, list) and f[3] == "work-available")
        assert server.run(run_id)["state"] == "available"
        assert claimed_ids(client) == [run_id]
        client.close()


def test_claim_whose_socket_died_before_the_reply_is_rolled_back(server: DevServer) -> None:
    run_id = enqueue_demo(server)
    server.hold_reply_on("claim", 2.0)
    doomed = joined(RawPhoenix(server))
    doomed.send("worker:queue", "claim", CLAIM)
    deadline = time.monotonic() + 5
    while server.run(run_id)["state"] != "claimed":  # claimed, its reply held back...
        assert time.monotonic() < deadline, server.run(run_id)["state"]
        time.sleep(0.02)
    doomed.close()  # ...and the socket dies before the reply goes out
    while server.run(run_id)["state"] != "available" or server.run(run_id)["worker_name"]:
        assert time.monotonic() < deadline, server.run(run_id)["state"]
        time.sleep(0.05)
    fresh = joined(RawPhoenix(server))
    assert claimed_ids(fresh) == [run_id]
    fresh.close()


@pytest.mark.parametrize(("claim", "field"), [
    ({"demand": -1}, "demand"), ({"demand": "1"}, "demand"),
    ({"queues": ["*", "manual"]}, "queues"), ({"queues": []}, "queues")])
def test_invalid_claim_values_get_an_error_reply(client: RawPhoenix, claim: dict,
                                                 field: str) -> None:
    reply = joined(client).call("worker:queue", "claim", {**CLAIM, **claim})
    assert reply["status"] == "error" and field in reply["response"]
