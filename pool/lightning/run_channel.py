"""The ``run:<id>`` channel: fetch what a run needs, then report its events (reference §6).

Each method returns a :class:`~pool.lightning.phoenix.Push`: pass ``callback=`` to be told
from the socket's thread, or call ``.result()`` to block. Failures read exactly as
ws-worker's (``[fetch:credential] {"errors":...}``, ``[run:complete] timeout``), because
they end up in run error messages users see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pool.lightning import payloads
from pool.lightning.phoenix import Channel, PhoenixSocket, Push, Reply

log = logging.getLogger(__name__)

Callback = Callable[[Push], None] | None


def decode_dataclip(response: Any) -> Any:
    """The input state from a ``fetch:dataclip`` reply.

    Lightning sends the JSON text as a binary frame (bytes here); the kit's mock sends a JSON
    list of byte values. Both are UTF-8 JSON once turned into bytes.
    """
    if isinstance(response, list):
        try:
            response = bytes(response)
        except (TypeError, ValueError):
            raise ValueError("dataclip reply is a list but not of byte values") from None
    if isinstance(response, bytes | bytearray):
        try:
            return json.loads(bytes(response).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"dataclip is not UTF-8 JSON: {exc}") from None
    if isinstance(response, dict):
        return response  # already JSON: tolerated, some servers inline small states
    raise ValueError(f"dataclip reply is a {type(response).__name__}, not bytes")


class RunChannel:
    """One claimed run's channel, joined with its run token (rejoined with it after drops)."""

    def __init__(self, sock: PhoenixSocket, run_id: str, token: str, timeout: float = 30.0,
                 on_join: Callable[[Reply, bool], None] | None = None) -> None:
        self.run_id = run_id
        self.on_join = on_join
        self.channel: Channel = sock.channel(f"run:{run_id}", {"token": token}, timeout=timeout,
                                             on_join=self._joined)

    def join(self, callback: Callback = None) -> Push:
        """Settles with the first join's outcome; a refused join should be followed by
        :meth:`leave` (the socket would otherwise keep retrying it)."""
        return self.channel.join(callback)

    def _joined(self, _channel: Channel, reply: Reply, rejoined: bool) -> None:
        if rejoined:
            level = logging.INFO if reply.ok else logging.ERROR
            log.log(level, "rejoined run:%s: %s", self.run_id, reply.status)
        if self.on_join is not None:
            self.on_join(reply, rejoined)

    # -- fetches (before the run starts) --------------------------------------------------------
    def fetch_plan(self, callback: Callback = None) -> Push:
        return self.channel.push("fetch:plan", {}, callback=callback, decode=_plan)

    def fetch_dataclip(self, dataclip_id: str, callback: Callback = None) -> Push:
        return self.channel.push("fetch:dataclip", {"id": dataclip_id}, callback=callback,
                                 decode=decode_dataclip)

    def fetch_credential(self, credential_id: str, callback: Callback = None) -> Push:
        return self.channel.push("fetch:credential", {"id": credential_id}, callback=callback)

    # -- events ------------------------------------------------------------------------------
    def send(self, event: str, payload: dict[str, Any], callback: Callback = None,
             encoded: str | None = None) -> Push:
        """Any run event, e.g. a pair from :class:`pool.lightning.payloads.RunEvents`."""
        return self.channel.push(event, payload, callback=callback, encoded=encoded)

    def send_logs(self, logs: list[dict[str, Any]], callback: Callback = None) -> Push:
        """Several ``run:log`` payloads as one ``run:batch_logs``."""
        return self.send(payloads.BATCH_LOGS, payloads.batch_payload(self.run_id, logs),
                         callback)

    def leave(self, callback: Callback = None) -> Push:
        return self.channel.leave(callback=callback)


def _plan(response: Any) -> dict[str, Any]:
    if not isinstance(response, dict):
        raise ValueError(f"plan is a {type(response).__name__}, not an object")
    return response
