"""Framing of the supervisor ⇄ executor protocol (DESIGN.md, "The executor protocol").

Each message is one JSON object with a ``type`` field, sent as a 4-byte big-endian length
followed by that many bytes of UTF-8 JSON. Length-prefixing (rather than newlines) lets a
state of any size, with any content, travel in one frame, and lets the reader know at once
when a frame is complete. The field names are the contract between ``pool/executor`` and
``pool/supervisor``: extend, don't rename.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 512 * 1024 * 1024

# message types, supervisor → executor
INIT = "init"
RUN = "run"
CANCEL = "cancel"
STOP = "stop"
# message types, executor → supervisor
READY = "ready"
RUN_START = "run-start"
STEP_START = "step-start"
LOG = "log"
STEP_COMPLETE = "step-complete"
RUN_COMPLETE = "run-complete"
RECYCLED = "recycled"
# the idle shim died: the executor is replacing it and is not ready until its next ``ready``
SHIM_LOST = "shim-lost"

# executor exit codes
EXIT_OK = 0
EXIT_BOOT_FAILURE = 3


class ProtocolError(Exception):
    """A frame that is not a JSON object with a ``type``, or a length over MAX_FRAME."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Incremental decoder: feed it bytes as they arrive, take whole messages out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> Iterator[dict[str, Any]]:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes is over the {MAX_FRAME} limit")
            end = HEADER.size + length
            if len(self._buf) < end:
                return
            body = bytes(self._buf[HEADER.size:end])
            del self._buf[:end]
            yield decode(body)


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("frame is not an object with a 'type'")
    return message


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> dict[str, Any] | None:
    """Blocking read of one message; ``None`` at EOF (the peer is gone)."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes is over the {MAX_FRAME} limit")
    body = _recv_exact(sock, length) if length else b""
    if body is None:
        return None
    return decode(body)
