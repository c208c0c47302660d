"""WebSocket framing read and written by the worker itself since the supervisor reads its socket
from its own loop: checked against websocket-client's independent implementation, byte-split
arrival, fragmentation, protocol errors, and multi-megabyte messages both ways over a real
loopback socket to the dev server."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import websocket

from pool.devserver.server import DevServer
from pool.lightning.payloads import RunEvents
from pool.lightning.phoenix import PhoenixSocket
from pool.lightning.plan import RunDefaults, convert_plan
from pool.lightning.queue_channel import QueueChannel
from pool.lightning.run_channel import RunChannel
from pool.lightning.workloops import default_workloops
from pool.lightning.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameParser,
    encode_frame,
)
from tests.lightning.conftest import CREDENTIALS, DEADLINE, PLAN
from tests.lightning.test_run_socket import executor_run, report


def server_frame(payload: bytes, opcode: int, fin: bool = True) -> bytes:
    """A frame as a server sends it (unmasked), built by websocket-client."""
    frame = websocket.ABNF(int(fin), 0, 0, 0, opcode, 0, payload)
    return frame.format()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_our_client_frames_read_back_through_websocket_client(size: int) -> None:
    payload = os.urandom(size)
    data = encode_frame(payload, OP_BINARY)
    chunks = [data]

    def recv(n: int) -> bytes:
        head = chunks[0][:n]
        chunks[0] = chunks[0][n:]
        return head

    frame = websocket._abnf.frame_buffer(recv, skip_utf8_validation=False).recv_frame()
    assert frame.mask_value == 1 and frame.fin == 1 and frame.opcode == OP_BINARY
    assert frame.data == payload  # unmasked by websocket-client with the key we sent


def test_frames_split_at_every_byte_come_out_whole_and_in_order() -> None:
    stream = (server_frame(b'["1","2","t","e",{}]', OP_TEXT)
              + server_frame(os.urandom(70_000), OP_BINARY)
              + server_frame(b"ping!", OP_PING))
    parser = FrameParser()
    out = []
    for i in range(len(stream)):
        out += parser.feed(stream[i:i + 1])
    assert [op for op, _ in out] == [OP_TEXT, OP_BINARY, OP_PING]
    assert out[0][1] == b'["1","2","t","e",{}]' and len(out[1][1]) == 70_000


def test_a_fragmented_message_is_joined_and_a_ping_between_comes_first() -> None:
    stream = (server_frame(b"hel", OP_TEXT, fin=False) + server_frame(b"hb", OP_PING)
              + server_frame(b"lo", 0, fin=False) + server_frame(b"!", 0))
    assert FrameParser().feed(stream) == [(OP_PING, b"hb"), (OP_TEXT, b"hello!")]


@pytest.mark.parametrize("stream, error", [
    (encode_frame(b"masked", OP_TEXT), "masked frame"),
    (bytes([0x80 | 0x40 | OP_TEXT, 1, 0x41]), "reserved bits"),
    (server_frame(b"x", 0), "continuation"),
    (server_frame(b"a", OP_TEXT, fin=False) + server_frame(b"b", OP_TEXT), "new message"),
    (bytes([0x80 | 0x3, 0]), "unknown opcode"),
    (bytes([OP_CLOSE, 0]), "control frame"),
])
def test_broken_framing_is_an_error_not_a_guess(stream: bytes, error: str) -> None:
    with pytest.raises(FrameError, match=error):
        FrameParser().feed(stream)


def test_multi_megabyte_messages_cross_the_socket_both_ways(server, connect) -> None:
    """An 8 MB dataclip arrives over many reads; an 8 MB step output leaves through partial
    writes (more than the kernel's socket buffer takes at once) without a byte out of place."""
    run_big_messages(server, connect())


def run_big_messages(server: DevServer, sock: PhoenixSocket) -> None:
    """A run whose input dataclip and first step's output are 8 MB each, through ``sock``."""
    big_input = {"data": {"blob": "x" * 8_000_000}}
    run_id = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips={"clip-demo": big_input},
                            wakeup=False)
    queue = QueueChannel(sock, default_workloops(1))
    assert queue.join().wait(DEADLINE).ok
    [claimed] = queue.claim(1, None, ["manual", "*"]).result(DEADLINE)
    assert claimed.id == run_id
    run = RunChannel(sock, claimed.id, claimed.token)
    assert run.join().wait(DEADLINE).ok
    converted = convert_plan(run.fetch_plan().result(DEADLINE), RunDefaults(),
                             run_id=run.run_id)
    assert run.fetch_dataclip(converted.dataclip_id).result(DEADLINE) == big_input

    step1, step2 = str(uuid.uuid4()), str(uuid.uuid4())
    messages = executor_run(step1, step2)
    big_output = {"data": {"blob": "y" * 8_000_000}}
    messages[4]["state"] = json.dumps(big_output)
    ledger = RunEvents(run.run_id, {**converted.limits, "payload_mb": 50},
                       converted.output_dataclips, converted.dataclip_id)
    replies = report(run, ledger, messages)
    assert [(e, r.status) for e, r in replies if not r.ok] == []
    assert server.rejections == []
    done = server.run(run.run_id)
    assert done["state"] == "success"
    stored = done["dataclips"][done["steps"][step1]["output_dataclip_id"]]
    assert stored == big_output
