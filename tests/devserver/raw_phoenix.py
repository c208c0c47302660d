"""A deliberately dumb Phoenix V2 client for the dev server's tests: hand-built frames only.

It must not reuse ``pool.lightning``: these tests check the server, and the client side is
checked against the server, so sharing code would let one bug hide another.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import websocket

from pool.devserver.server import DevServer

TIMEOUT = 10.0


def worker_token(secret: str, **claims: Any) -> str:
    """A worker token with ws-worker's claims; a claim given as None is left out."""
    body = {"worker_id": "test-worker", "iat": int(time.time()), "iss": "urn:openfn:worker"}
    body.update(claims)
    body = {key: value for key, value in body.items() if value is not None}
    return jwt.encode(body, secret, algorithm="HS256")


def socket_url(server: DevServer, token: str | None = None, vsn: str | None = "2.0.0") -> str:
    query = [f"token={token or worker_token(server.secret)}", "api_version=1.2",
             "worker_version=9.9.9"]
    if vsn is not None:
        query.append(f"vsn={vsn}")
    return f"{server.url}/websocket?{'&'.join(query)}"


def ts() -> str:
    """A 16-digit microsecond timestamp, as the worker sends."""
    return str(time.time_ns() // 1000)


def new_id() -> str:
    return str(uuid.uuid4())


class RawPhoenix:
    """Send frames, read frames; keep what arrives while waiting for something else."""

    def __init__(self, server: DevServer, token: str | None = None) -> None:
        self.ws = websocket.create_connection(socket_url(server, token), timeout=TIMEOUT)
        self.ref = 0
        self.join_refs: dict[str, str] = {}
        self.inbox: list[Any] = []

    def close(self) -> None:
        self.ws.close()

    def send(self, topic: str, event: str, payload: Any, join_ref: str | None = None) -> str:
        self.ref += 1
        ref = str(self.ref)
        if event == "phx_join":
            join_ref = self.join_refs[topic] = ref
        elif join_ref is None:
            join_ref = self.join_refs.get(topic)
        self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))
        return ref

    def receive(self) -> Any:
        """The next frame: a decoded list for text, ``bytes`` for binary."""
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise websocket.WebSocketConnectionClosedException(f"closed by the server: {data!r}")
        if opcode == websocket.ABNF.OPCODE_BINARY:
            return bytes(data)
        return json.loads(data)

    def wait_for(self, match: Callable[[Any], bool], timeout: float = TIMEOUT) -> Any:
        for i, frame in enumerate(self.inbox):
            if match(frame):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                frame = self.receive()
            except websocket.WebSocketTimeoutException:
                break
            if match(frame):
                return frame
            self.inbox.append(frame)
        raise TimeoutError("no matching frame")

    def reply_to(self, ref: str, timeout: float = TIMEOUT) -> Any:
        """The reply with this ref: ``{status, response}`` for text, ``bytes`` for binary."""
        def is_reply(frame: Any) -> bool:
            if isinstance(frame, bytes):
                return parse_binary_reply(frame)["ref"] == ref
            return frame[1] == ref and frame[3] == "phx_reply"

        frame = self.wait_for(is_reply, timeout)
        return frame if isinstance(frame, bytes) else frame[4]

    def call(self, topic: str, event: str, payload: Any) -> Any:
        return self.reply_to(self.send(topic, event, payload))

    def join(self, topic: str, payload: Any) -> Any:
        return self.call(topic, "phx_join", payload)


def parse_binary_reply(frame: bytes) -> dict:
    """Decode a kind-1 binary reply (lightning-protocol.md §2.2)."""
    assert frame[0] == 1, f"not a reply frame: kind {frame[0]}"
    sizes = frame[1:5]
    fields, offset = [], 5
    for size in sizes:
        fields.append(frame[offset:offset + size].decode())
        offset += size
    return {"join_ref": fields[0], "ref": fields[1], "topic": fields[2], "status": fields[3],
            "body": frame[offset:]}
