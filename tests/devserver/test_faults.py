"""Injected faults, as later issues' tests will use them."""

from __future__ import annotations

import time

import pytest
import websocket

from pool.devserver.server import DevServer
from tests.devserver.conftest import claim_and_join, enqueue_demo
from tests.devserver.raw_phoenix import RawPhoenix, ts


def assert_dropped(client: RawPhoenix) -> None:
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        client.wait_for(lambda frame: False, timeout=5)


def test_drop_sockets_cuts_every_worker(server: DevServer) -> None:
    first, second = RawPhoenix(server), RawPhoenix(server)
    assert first.call("phoenix", "heartbeat", {})["status"] == "ok"
    assert second.call("phoenix", "heartbeat", {})["status"] == "ok"
    server.drop_sockets()
    assert_dropped(first)
    assert_dropped(second)
    # the server itself carries on
    third = RawPhoenix(server)
    assert third.call("phoenix", "heartbeat", {})["status"] == "ok"
    third.close()


def test_drop_socket_on_an_event_of_one_run(client: RawPhoenix, server: DevServer) -> None:
    run_id = enqueue_demo(server)
    server.drop_socket_on("run:start", run_id=run_id)
    topic = claim_and_join(client, server, run_id)
    client.send(topic, "run:start", {"timestamp": ts()})
    assert_dropped(client)
    run = server.run(run_id)
    assert run["state"] == "claimed"                        # dropped before it was handled
    assert run["events"][-1]["reply"]["status"] == "dropped"
    # the fault fired once: a new socket can start the run
    again = RawPhoenix(server)
    token = next(f["frame"][4]["response"]["runs"][0]["token"] for f in server.frames
                 if f["dir"] == "lightning->worker" and isinstance(f["frame"], list)
                 and isinstance(f["frame"][4], dict)
                 and (f["frame"][4].get("response") or {}).get("runs"))
    assert again.join(topic, {"token": token})["status"] == "ok"
    assert again.call(topic, "run:start", {"timestamp": ts()})["status"] == "ok"
    again.close()


def test_reply_error_on_answers_with_the_given_error_then_recovers(client: RawPhoenix,
                                                                   server: DevServer) -> None:
    run_id = enqueue_demo(server)
    server.reply_error_on("fetch:plan", {"errors": {"limit": ["blocked"]}}, times=2)
    topic = claim_and_join(client, server, run_id)
    expected = {"status": "error", "response": {"errors": {"limit": ["blocked"]}}}
    assert client.call(topic, "fetch:plan", {}) == expected
    assert client.call(topic, "fetch:plan", {}) == expected
    assert client.call(topic, "fetch:plan", {})["status"] == "ok"
    assert server.rejections[0]["reason"] == "injected fault: error reply"


def test_hold_reply_delays_that_channel_only(client: RawPhoenix, server: DevServer) -> None:
    run_id = enqueue_demo(server)
    server.hold_reply_on("run:start", 1.0, run_id=run_id)
    topic = claim_and_join(client, server, run_id)
    held = client.send(topic, "run:start", {"timestamp": ts()})
    beat = client.send("phoenix", "heartbeat", {})
    first = client.wait_for(lambda f: isinstance(f, list) and f[3] == "phx_reply")
    assert first[1] == beat                                  # heartbeat overtakes the held reply
    assert client.reply_to(held)["status"] == "ok"
    assert server.run(run_id)["state"] == "started"


def test_short_lived_run_tokens_expire(client: RawPhoenix, server: DevServer) -> None:
    server.set_run_token_lifetime(1)
    run_id = enqueue_demo(server)
    assert client.join("worker:queue", {})["status"] == "ok"
    reply = client.call("worker:queue", "claim", {"demand": 1, "worker_name": None})
    token = reply["response"]["runs"][0]["token"]
    time.sleep(2.1)                                          # let the token's exp pass
    assert client.join(f"run:{run_id}", {"token": token})["response"] == {"reason": "unauthorized"}
    assert "expired" in server.rejections[-1]["reason"]


def test_heartbeat_can_be_held_like_any_event(client: RawPhoenix, server: DevServer) -> None:
    server.hold_reply_on("heartbeat", 0.5)
    held = client.send("phoenix", "heartbeat", {})
    assert client.join("worker:queue", {})["status"] == "ok"   # other topics are not blocked
    assert client.reply_to(held) == {"status": "ok", "response": {}}
