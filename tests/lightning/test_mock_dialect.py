"""The kit's lightning-mock speaks a looser dialect than Lightning (reference §14); operators
test with it, so the client must cope: ``chan_reply_<ref>`` replies, a join answered with the
string ``"ok"``, ``work-available`` carrying the string ``"{}"``, dataclips as JSON lists of
byte values, non-UUID ids, and heartbeats that are never answered.

A few lines of a real websocket server (``websockets``) reproduce exactly those frames, as
recorded in the transcripts' ``lightning->worker`` direction.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from websockets.sync.server import ServerConnection, serve

from pool import __version__
from pool.lightning.phoenix import PhoenixSocket, build_socket_url
from pool.lightning.queue_channel import ClaimedRun, QueueChannel
from pool.lightning.run_channel import RunChannel, decode_dataclip
from pool.lightning.workloops import default_workloops
from tests.lightning.conftest import DEADLINE, wait_until

DATACLIP = {"data": {"patients": [1, 2, 3]}}
heartbeats: list[str] = []


def mock_handler(conn: ServerConnection) -> None:
    for text in conn:
        join_ref, ref, topic, event, payload = json.loads(text)
        if topic == "phoenix":
            heartbeats.append(ref)
            continue  # lightning-mock never answers heartbeats
        if event == "phx_join":
            response: object = "ok"
        elif event == "claim":
            response = {"runs": [{"id": "run-a", "token": "x.y.z"}]}
        elif event == "fetch:dataclip":
            response = list(json.dumps(DATACLIP).encode())
        else:
            response = {}
        conn.send(json.dumps([join_ref, ref, topic, f"chan_reply_{ref}",
                              {"status": "ok", "response": response}]))
        if event == "phx_join" and topic == "worker:queue":
            conn.send(json.dumps([None, "", "worker:queue", "work-available", "{}"]))


@contextmanager
def serving(handler: Callable[[ServerConnection], None]) -> Iterator[str]:
    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/worker"
        server.shutdown()


@pytest.fixture
def mock_url() -> Iterator[str]:
    with serving(mock_handler) as url:
        yield url


def open_socket(url: str, **options: object) -> PhoenixSocket:
    sock = PhoenixSocket(build_socket_url(url, "any", __version__), timeout=DEADLINE,
                         reconnect_delays=(0.05,), **options).connect()
    assert sock.wait_open(DEADLINE)
    return sock


def test_the_kit_mock_dialect_is_understood(mock_url) -> None:
    sock = open_socket(mock_url, heartbeat_s=0.05)
    try:
        woken = threading.Event()
        queue = QueueChannel(sock, default_workloops(1), on_work_available=woken.set)
        assert queue.join().wait(DEADLINE).response == "ok"
        assert woken.wait(DEADLINE)
        assert queue.claim(1, None, ["manual", "*"]).result(DEADLINE) == [
            ClaimedRun("run-a", "x.y.z")]
        run = RunChannel(sock, "run-a", "x.y.z", timeout=DEADLINE)
        assert run.join().wait(DEADLINE).ok
        assert run.fetch_dataclip("clip-demo").result(DEADLINE) == DATACLIP
        # unanswered heartbeats from a server that never answers them: no reconnect
        heartbeats.clear()
        wait_until(lambda: len(heartbeats) >= 5, "five unanswered heartbeats")
        assert sock.is_open
        assert run.fetch_plan().result(DEADLINE) == {}
    finally:
        sock.disconnect()


@pytest.mark.parametrize("response, expected", [
    (list(b'{"a":1}'), {"a": 1}),
    (b'{"a":1}', {"a": 1}),
    (b"null", None),
    ({"a": 1}, {"a": 1}),
])
def test_dataclip_replies_of_every_shape_decode(response, expected) -> None:
    assert decode_dataclip(response) == expected


@pytest.mark.parametrize("response, match", [
    ([300, 1], "not of byte values"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"{nope", "not UTF-8 JSON"),
    ("text", "not bytes"),
])
def test_unreadable_dataclips_are_clear_errors(response, match) -> None:
    with pytest.raises(ValueError, match=match):
        decode_dataclip(response)


def test_malformed_frames_are_logged_and_skipped(caplog) -> None:
    def garbage_then_reply(conn: ServerConnection) -> None:
        for text in conn:
            join_ref, ref, topic, _event, _payload = json.loads(text)
            if topic == "phoenix":
                continue
            conn.send("this is not json")
            conn.send(json.dumps({"topic": topic, "event": "v1 object form"}))
            conn.send(json.dumps([join_ref, ref, topic, "phx_reply", {"no": "status"}]))
            conn.send(bytes([9, 1, 2]))
            conn.send(json.dumps([join_ref, ref, topic, "phx_reply",
                                  {"status": "ok", "response": {}}]))

    with serving(garbage_then_reply) as url:
        sock = open_socket(url)
        try:
            channel = sock.channel("worker:queue", {})
            assert channel.join().wait(DEADLINE).ok
            assert channel.push("claim", {"demand": 1}).wait(DEADLINE).ok
        finally:
            sock.disconnect()
    assert caplog.text.count("malformed frame from Lightning ignored") >= 6
    assert "malformed reply from Lightning" in caplog.text


def test_silence_after_answered_heartbeats_means_a_dead_link(caplog) -> None:
    """Once a server has answered heartbeats, an unanswered one with nothing else heard since
    is a dead connection: the client reconnects (and the server sees a new socket)."""
    connections: list[int] = []

    def answer_one_heartbeat_then_go_quiet(conn: ServerConnection) -> None:
        connections.append(1)
        answered = 0
        for text in conn:
            join_ref, ref, topic, event, _payload = json.loads(text)
            if topic == "phoenix" and answered < 1:
                answered += 1
                conn.send(json.dumps([None, ref, "phoenix", "phx_reply",
                                      {"status": "ok", "response": {}}]))

    with serving(answer_one_heartbeat_then_go_quiet) as url:
        sock = open_socket(url, heartbeat_s=0.05)
        try:
            wait_until(lambda: len(connections) >= 2, "a reconnect")
        finally:
            sock.disconnect()
    assert "no heartbeat reply from Lightning" in caplog.text
    assert "lost the connection to Lightning (heartbeat timeout)" in caplog.text
