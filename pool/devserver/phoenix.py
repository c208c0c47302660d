"""Phoenix channels serializer V2, server side: decode the worker's frames, encode ours.

Text frames are ``[join_ref, ref, topic, event, payload]``; the one binary frame Lightning
sends is a reply (kind 1) whose payload is raw bytes — the ``fetch:dataclip`` answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

REPLY_KIND = 1


class MalformedFrame(ValueError):
    """A frame that is not a V2 message; the message says what is wrong with it."""


@dataclass(frozen=True)
class Message:
    """One decoded client frame."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any

    def as_list(self) -> list:
        return [self.join_ref, self.ref, self.topic, self.event, self.payload]


def decode(text: str) -> Message:
    """Parse a text frame; raise ``MalformedFrame`` for anything Phoenix could not route."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MalformedFrame(f"not JSON: {exc}") from None
    if not isinstance(data, list) or len(data) != 5:
        raise MalformedFrame("expected a JSON array [join_ref, ref, topic, event, payload]")
    join_ref, ref, topic, event, payload = data
    for name, value in (("join_ref", join_ref), ("ref", ref)):
        if value is not None and not isinstance(value, str):
            raise MalformedFrame(f"{name} must be a string or null, got {value!r}")
    if not isinstance(topic, str) or not topic:
        raise MalformedFrame(f"topic must be a non-empty string, got {topic!r}")
    if not isinstance(event, str) or not event:
        raise MalformedFrame(f"event must be a non-empty string, got {event!r}")
    return Message(join_ref, ref, topic, event, payload)


def reply(msg: Message, status: str, response: Any) -> list:
    """The ``phx_reply`` frame answering ``msg``."""
    return [msg.join_ref, msg.ref, msg.topic, "phx_reply", {"status": status, "response": response}]


def push(join_ref: str | None, topic: str, event: str, payload: Any) -> list:
    """A server push on a joined channel (``ref`` is null)."""
    return [join_ref, None, topic, event, payload]


def binary_reply(msg: Message, status: str, body: bytes) -> bytes:
    """A kind-1 binary reply: sizes of join_ref/ref/topic/status, those strings, then the body."""
    parts = [(msg.join_ref or "").encode(), (msg.ref or "").encode(), msg.topic.encode(),
             status.encode()]
    if any(len(part) > 255 for part in parts):
        raise ValueError("join_ref, ref, topic and status must each fit in 255 bytes")
    header = bytes([REPLY_KIND, *(len(part) for part in parts)])
    return header + b"".join(parts) + body
