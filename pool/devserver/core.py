"""State shared by the dev server's channels and its public API, and what a handler returns.

The event loop thread, the HTTP API thread and the caller's thread all read ``frames``,
``rejections`` and ``connections``; appends go through one lock so a reader copying the list
never sees it change size under it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pool.devserver.faults import Faults
from pool.devserver.runs import Run, RunBook, now_us
from pool.devserver.tokens import RunTokens

# Lightning's defaults: run timeout when the plan sets none, and RUN_GRACE_PERIOD_SECONDS.
DEFAULT_RUN_TIMEOUT_MS = 300_000
GRACE_PERIOD_S = 60


@dataclass
class Reply:
    """A handler's answer: a ``phx_reply`` (or a binary reply when ``binary`` is set)."""

    status: str
    response: Any = None
    binary: bytes | None = None
    on_sent: Callable[[], None] | None = None     # e.g. start the claim's join timers
    on_unsent: Callable[[], None] | None = None   # e.g. roll a claim back: the socket died
    detail: str | None = None                     # why it was refused, for ``rejections``
    then_frame: list | None = None                # sent right after the reply (phx_close)


class ChannelCrash(Exception):
    """The payload matches no handler clause: Lightning's channel process would crash."""


class Core:
    """Everything the channels share: the run book, keys, faults, records and knobs."""

    def __init__(self, secret: str, tokens: RunTokens, run_token_lifetime_s: float | None,
                 join_timeout_s: float, idle_timeout_s: float,
                 grace_period_s: float = GRACE_PERIOD_S) -> None:
        self.secret = secret
        # worker secrets a new socket's token may be signed with: the current one first, and
        # the previous one while a rotation lets both in (rotate_secret)
        self.accepted_secrets = [secret]
        self.tokens = tokens
        self.book = RunBook()
        self.faults = Faults()
        self.run_token_lifetime_s = run_token_lifetime_s
        self.join_timeout_s = join_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.grace_period_s = grace_period_s
        self.frames: list[dict] = []
        self.record_frames = True  # off for long benchmarks: the list would grow without limit
        self.rejections: list[dict] = []
        self.connections: list[dict] = []
        self.live: set[Any] = set()          # open WorkerConnection objects (loop thread only)
        self.max_runs_per_claim: int | None = None  # None: up to the claim's demand
        self.refuse_until = 0.0  # fault: new worker sockets refused (HTTP 503) until then
        self.loop: asyncio.AbstractEventLoop | None = None
        self._t0 = time.monotonic()
        self._records = threading.Lock()

    def record_frame(self, direction: str, conn_id: int, frame: Any) -> None:
        if not self.record_frames:
            return
        entry = {"dir": direction, "t_ms": round((time.monotonic() - self._t0) * 1000),
                 "conn": conn_id, "frame": frame}
        with self._records:
            self.frames.append(entry)

    def reject(self, conn_id: int | None, topic: str | None, event: str | None, payload: Any,
               reason: Any) -> None:
        run_id = topic[4:] if topic and topic.startswith("run:") else None
        entry = {"time_us": now_us(), "conn": conn_id, "topic": topic, "event": event,
                 "run_id": run_id, "payload": payload, "reason": reason}
        with self._records:
            self.rejections.append(entry)

    def add_connection(self, info: dict) -> int:
        with self._records:
            info["conn"] = len(self.connections) + 1
            self.connections.append(info)
            return info["conn"]

    def push_work_available(self) -> None:
        """Push ``work-available`` on every joined ``worker:queue`` channel (any thread)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def fire() -> None:
            for conn in list(self.live):
                conn.push("worker:queue", "work-available", {})

        loop.call_soon_threadsafe(fire)

    def token_lifetime(self, run: Run) -> float:
        """The fault's short lifetime if set, else Lightning's run timeout + grace period."""
        if self.run_token_lifetime_s is not None:
            return self.run_token_lifetime_s
        return self.lost_after_s(run)

    def lost_after_s(self, run: Run) -> float:
        """Seconds after its claim when the janitor calls an unfinished run lost: the run's
        timeout (``run_timeout_ms``, else Lightning's default) plus the grace period."""
        timeout_ms = (run.plan.get("options") or {}).get("run_timeout_ms") or DEFAULT_RUN_TIMEOUT_MS
        return timeout_ms / 1000 + self.grace_period_s
