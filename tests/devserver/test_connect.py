"""The socket itself: who may connect, heartbeats, topics, leave, malformed frames."""

from __future__ import annotations

import time

import pytest
import websocket

from pool.devserver.server import DevServer
from tests.devserver.raw_phoenix import RawPhoenix, socket_url, worker_token


def refused_status(url: str) -> tuple[int, str]:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(url, timeout=5)
    body = info.value.resp_body.decode() if info.value.resp_body else ""
    return info.value.status_code, body


@pytest.mark.parametrize("token_kind", [
    "wrong-secret", "wrong-iss", "no-worker-id", "no-iat", "future-nbf", "garbage"])
def test_bad_worker_token_is_refused_with_401(server: DevServer, token_kind: str) -> None:
    token = {
        "wrong-secret": worker_token("not-the-secret-but-long-enough-for-hs256"),
        "wrong-iss": worker_token(server.secret, iss="Lightning"),
        "no-worker-id": worker_token(server.secret, worker_id=None),
        "no-iat": worker_token(server.secret, iat=None),
        "future-nbf": worker_token(server.secret, nbf=int(time.time()) + 3600),
        "garbage": "not.a.jwt",
    }[token_kind]
    status, body = refused_status(socket_url(server, token))
    assert status == 401
    assert "Unauthorized" in body
    assert server.rejections[-1]["event"] == "connect"
    assert server.connections == []


def test_good_token_with_extra_claims_and_past_nbf_connects(server: DevServer) -> None:
    token = worker_token(server.secret, nbf=int(time.time()) - 10, extra="fine")
    phx = RawPhoenix(server, token)
    assert phx.call("phoenix", "heartbeat", {}) == {"status": "ok", "response": {}}
    phx.close()
    info = server.connections[0]
    assert (info["worker_id"], info["worker_version"], info["api_version"]) == \
        ("test-worker", "9.9.9", "1.2")


def test_connection_without_vsn_2_is_refused_with_the_reason(server: DevServer) -> None:
    status, body = refused_status(socket_url(server, vsn=None))
    assert status == 403
    assert "vsn=2.0.0 is required" in body
    assert refused_status(socket_url(server, vsn="1.0.0"))[0] == 403


def test_wrong_path_is_404(server: DevServer) -> None:
    url = socket_url(server).replace("/worker/websocket", "/socket/websocket")
    assert refused_status(url)[0] == 404


def test_push_to_unjoined_topic_is_unmatched(client: RawPhoenix, server: DevServer) -> None:
    assert client.call("worker:queue", "claim", {"demand": 1, "worker_name": None}) == \
        {"status": "error", "response": {"reason": "unmatched topic"}}
    assert client.join("rooms:lobby", {})["response"] == {"reason": "unmatched topic"}
    assert [r["event"] for r in server.rejections] == ["claim", "phx_join"]


def test_leave_is_acknowledged_then_closed(client: RawPhoenix) -> None:
    join_ref = client.send("worker:queue", "phx_join", {"capacity": 1})
    assert client.reply_to(join_ref)["status"] == "ok"
    leave_ref = client.send("worker:queue", "phx_leave", {})
    assert client.reply_to(leave_ref) == {"status": "ok", "response": {}}
    close = client.wait_for(lambda f: isinstance(f, list) and f[3] == "phx_close")
    assert close == [join_ref, join_ref, "worker:queue", "phx_close", {}]
    # the channel is gone: pushes on it are unmatched again
    assert client.call("worker:queue", "claim", {"demand": 1, "worker_name": None})["status"] == "error"


@pytest.mark.parametrize("frame", ["{not json", '{"topic": "phoenix"}', '["1", "1", "t"]',
                                   '[null, "1", 5, "heartbeat", {}]'])
def test_malformed_frame_closes_that_socket_only(server: DevServer, frame: str) -> None:
    bad, good = RawPhoenix(server), RawPhoenix(server)
    bad.ws.send(frame)
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        bad.receive()
    bad.close()
    assert "malformed frame" in server.rejections[-1]["reason"]
    assert good.call("phoenix", "heartbeat", {})["status"] == "ok"
    good.close()


def test_binary_frame_from_worker_closes_the_socket(server: DevServer) -> None:
    bad = RawPhoenix(server)
    bad.ws.send_binary(b"\x00\x01")
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        bad.receive()
    bad.close()
    assert "binary frames" in server.rejections[-1]["reason"]


def test_frames_are_recorded_both_ways(client: RawPhoenix, server: DevServer) -> None:
    ref = client.send("phoenix", "heartbeat", {})
    client.reply_to(ref)
    assert [f["dir"] for f in server.frames] == ["worker->lightning", "lightning->worker"]
    assert server.frames[0]["frame"] == [None, ref, "phoenix", "heartbeat", {}]
    assert server.frames[1]["frame"] == [None, ref, "phoenix", "phx_reply",
                                         {"status": "ok", "response": {}}]


def test_a_rotated_secret_refuses_the_old_one_unless_told_to_accept_both(
        server: DevServer) -> None:
    old = server.secret
    kept = RawPhoenix(server, worker_token(old))  # open sockets stay open across a rotation
    new = server.rotate_secret(accept_old=True)
    assert server.secret == new != old
    for secret in (old, new):  # the rolling window: either connects
        RawPhoenix(server, worker_token(secret)).close()
    server.rotate_secret(new)  # the window closes: only the new one
    assert refused_status(socket_url(server, worker_token(old)))[0] == 401
    RawPhoenix(server, worker_token(new)).close()
    assert kept.call("phoenix", "heartbeat", {}) == {"status": "ok", "response": {}}
    kept.close()


def test_a_frame_over_the_limit_closes_the_socket_with_1009_like_lightning() -> None:
    with DevServer(max_frame_bytes=100_000) as server:
        big, good = RawPhoenix(server), RawPhoenix(server)
        big.ws.send('[null,"1","phoenix","heartbeat",{"pad":"' + "x" * 100_000 + '"}]')
        opcode, data = big.ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 1009  # message too big
        big.ws.shutdown()  # hang up, as the worker does on a close
        deadline = time.monotonic() + 10
        while not server.rejections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "closed with 1009" in server.rejections[-1]["reason"]
        # a frame within the limit is served as usual, on the other socket
        assert good.call("phoenix", "heartbeat", {"pad": "x" * 90_000})["status"] == "ok"
        good.close()
