"""WebSocket frames (RFC 6455) as the worker's side of the connection reads and writes them.

The handshake stays with websocket-client (``phoenix.py``); after it, the Phoenix socket owns
the TCP stream and reads it from its event loop, so frames are parsed here from whatever bytes
have arrived: many small frames per read, a large dataclip across many reads. Parsing the
buffer in one pass was, with the thread hops gone, most of what a frame cost the supervisor.
Writing builds the masked client frame in one go (RFC 6455 5.3: a fresh random key per frame,
XOR done on whole integers, which is C speed for any size).
"""

from __future__ import annotations

import os
import struct

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
MAX_MESSAGE = 1 << 30  # a message announcing more than this is a broken stream, not a dataclip

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


class FrameError(Exception):
    """The byte stream is not valid WebSocket framing from a server; the connection is lost."""


class FrameParser:
    """Incremental parser of server → client frames: feed bytes, take whole messages out.

    Control frames (close, ping, pong) come out as they arrive, even between the fragments of a
    message; data fragments are joined into one message with the first fragment's opcode.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._part_op: int | None = None

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise FrameError("frame with reserved bits set (no extension was agreed)")
            if b1 & 0x80:
                raise FrameError("masked frame from the server")
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                (length,) = _U16.unpack_from(buf, pos + 2)
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = _U64.unpack_from(buf, pos + 2)
                head = 10
                if length > MAX_MESSAGE:
                    raise FrameError(f"frame of {length} bytes announced")
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head:end])
            pos = end
            self._frame(b0 & 0x80, b0 & 0x0F, payload, out)
        if pos:
            del buf[:pos]
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes,
               out: list[tuple[int, bytes]]) -> None:
        if opcode >= OP_CLOSE:
            if not fin or len(payload) > 125:
                raise FrameError("fragmented or oversized control frame")
            out.append((opcode, payload))
            return
        if opcode == OP_CONTINUATION:
            if self._part_op is None:
                raise FrameError("continuation frame without a message to continue")
            self._parts.append(payload)
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._part_op is not None:
                raise FrameError("new message before the previous one's last fragment")
            if fin:
                out.append((opcode, payload))
                return
            self._part_op, self._parts = opcode, [payload]
        else:
            raise FrameError(f"unknown opcode {opcode:#x}")
        if sum(len(p) for p in self._parts) > MAX_MESSAGE:
            raise FrameError("message over the size limit")
        if fin:
            out.append((self._part_op, b"".join(self._parts)))
            self._part_op, self._parts = None, []


def encode_frame(payload: str | bytes, opcode: int = OP_TEXT) -> bytes:
    """One masked, unfragmented client frame."""
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + _U16.pack(n)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + _U64.pack(n)
    key = os.urandom(4)
    if not n:
        return head + key
    keys = key * (n // 4 + 1)
    masked = (int.from_bytes(data, "little")
              ^ int.from_bytes(keys[:n], "little")).to_bytes(n, "little")
    return head + key + masked


def close_frame(code: int = 1000) -> bytes:
    return encode_frame(_U16.pack(code), OP_CLOSE)
