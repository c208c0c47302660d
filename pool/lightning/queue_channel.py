"""The ``worker:queue`` channel: announce capacity, claim runs, hear ``work-available``.

Claims inherit the long claim timeout (1 h by default, reference §2.4): Lightning may hold a
claim while it looks for work. A claim in flight when the socket drops is *failed*, not sent
again: Lightning rolls back the runs of a claim whose socket died, and sending it twice could
claim runs nobody has room for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pool.lightning.phoenix import Channel, PhoenixSocket, Push, Reply
from pool.lightning.workloops import Workloop, queue_join_payload

log = logging.getLogger(__name__)

TOPIC = "worker:queue"
WORK_AVAILABLE = "work-available"


@dataclass(frozen=True)
class ClaimedRun:
    """A run Lightning handed over: join ``run:<id>`` with ``token`` within 30 s."""

    id: str
    token: str


def decode_claim(response: Any) -> list[ClaimedRun]:
    """``{"runs": [{"id", "token"}, ...]}`` → runs; malformed entries are logged and skipped."""
    runs = response.get("runs") if isinstance(response, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f"claim reply has no 'runs' list: {response!r:.200}")
    claimed = []
    for entry in runs:
        if (isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]
                and isinstance(entry.get("token"), str)):
            claimed.append(ClaimedRun(entry["id"], entry["token"]))
        else:
            log.error("claim reply holds a malformed run %r; skipped", entry)
    return claimed


class QueueChannel:
    """``worker:queue`` on a socket. ``on_work_available()`` and ``on_join(reply, rejoined)``
    are called from the socket's thread (keep them cheap); unknown events are ignored.
    """

    def __init__(
        self,
        sock: PhoenixSocket,
        workloops: list[Workloop],
        claim_timeout: float = 3600.0,
        on_work_available: Callable[[], None] | None = None,
        on_join: Callable[[Reply, bool], None] | None = None,
    ) -> None:
        self.on_work_available = on_work_available
        self.on_join = on_join
        self.channel: Channel = sock.channel(
            TOPIC, queue_join_payload(workloops), timeout=claim_timeout,
            on_message=self._on_message, on_join=self._joined)

    def join(self, callback: Callable[[Push], None] | None = None) -> Push:
        return self.channel.join(callback)

    def claim(self, demand: int, worker_name: str | None, queues: list[str] | tuple[str, ...],
              callback: Callable[[Push], None] | None = None) -> Push:
        """Ask for up to ``demand`` runs; ``push.result()`` is a list of :class:`ClaimedRun`.

        ``worker_name`` is always sent (``null`` is fine): Lightning's channel crashes on a
        claim without it.
        """
        payload = {"demand": demand, "worker_name": worker_name or None, "queues": list(queues)}
        return self.channel.push("claim", payload, callback=callback, resend=False,
                                 decode=decode_claim)

    def leave(self) -> Push:
        return self.channel.leave()

    def _joined(self, _channel: Channel, reply: Reply, rejoined: bool) -> None:
        if self.on_join is not None:
            self.on_join(reply, rejoined)

    def _on_message(self, event: str, payload: Any) -> None:
        if event == WORK_AVAILABLE:  # payload is {} from Lightning, the string "{}" from the mock
            if self.on_work_available is not None:
                self.on_work_available()
        else:
            log.debug("worker:queue event %r ignored (payload %.200r)", event, payload)
