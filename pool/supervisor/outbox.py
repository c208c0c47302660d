"""One run's events on their way to Lightning: strictly in order, one reply at a time.

Rules (lightning-protocol.md §6.3, DESIGN "A joined run always ends with run:complete"):

* An event is sent, its reply awaited, then the next: ``step:complete`` never overtakes its
  logs, ``run:complete`` never overtakes ``step:complete``.
* Batching (``WORKER_BATCH_LOGS``): log lines at the head of the queue go as one
  ``run:batch_logs``, sent at once when ``batch_limit`` lines are waiting or another event is
  waiting behind them, else after ``batch_interval``. The worker's own lines (versions, final
  status) go as batches of one, as ws-worker sends them.
* An error reply is logged and the queue goes on, except for ``step:complete``: it is sent once
  more without its dataclip (a too-large or refused body must not cost the step).
* No reply in time: a log event is not sent again (it may have landed; a second copy would
  duplicate it), a lifecycle event is sent again, same ids, until any reply comes — an error
  reply to a resend means the first copy landed.
* Lightning's frame limit (``WORKER_MAX_FRAME_BYTES``, its ``max_frame_size``) bounds what is
  actually sent, the encoded frame: an event too big is made to fit as it is queued (the
  session's ``fit``: dataclip withheld, log line or final state redacted) and log batches are
  split by encoded size. An event that cannot be made to fit, or that Lightning closed the
  socket on all the same (close code 1009: a limit lower than the setting), is never sent
  again: the run ends as an ``exception`` that says why (the session's ``end``), so the socket
  is not closed again and again by the same frame and the next runs flow.
* The socket is down: nothing new is sent; what was in flight is sent again after the rejoin.
  Kept events are bounded in bytes (``WORKER_OUTBOX_CAP_MB``): above the cap, log lines are
  dropped, oldest first (the last lines usually say how the run ended); lifecycle events never
  are, so the run is still reported whole. Each drop is counted; the first and the total are
  logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pool.lightning.payloads import (
    BATCH_LOGS,
    RUN_COMPLETE,
    RUN_LOG,
    STEP_COMPLETE,
    STEP_START,
    Event,
    batch_payload,
)
from pool.lightning.phoenix import TOO_BIG, Reply, describe_failure
from pool.supervisor.timers import Timers

log = logging.getLogger(__name__)

LOG = "log"  # an engine log line: may share a batch
LINE = "line"  # a line the worker writes itself: a batch of its own
LIFECYCLE = "lifecycle"
LOG_EVENTS = (RUN_LOG, BATCH_LOGS)
MB = 1024 * 1024
# each event is encoded once, when queued: its size counts against the cap and the same text
# goes into the frame (json.dumps with options would build a new encoder per event)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# the frame around a payload: ``["12","345","run:<uuid>","step:complete",`` and the WebSocket
# header, with room to spare; a batch adds ``{"run_id":"<uuid>","logs":[...]}``
ENVELOPE_BYTES = 256
UTF8_MAX = 4  # bytes per character at most: a text this short surely fits, unmeasured

Send = Callable[[str, dict[str, Any], int, str | None], None]
Count = Callable[..., None]
Fit = Callable[[str, dict[str, Any], int], list[Event] | None]
End = Callable[[str, dict[str, str]], list[Event]]


@dataclass
class Outgoing:
    event: str
    payload: dict[str, Any]
    kind: str
    text: str | None  # the payload as sent; None once the payload changed after queueing
    size: int
    wire: int = 0  # bytes it takes in a frame: exact when large, else an upper bound


@dataclass
class InFlight:
    items: list[Outgoing]
    event: str
    payload: dict[str, Any]
    encoded: str | None = None  # ``payload`` as JSON, when it is one queued event unchanged
    resent: bool = False  # sent again after a timeout: an error reply now means it landed
    without_dataclip: bool = False
    await_rejoin: bool = False  # timed out while the socket was down: send after the rejoin


class Outbox:
    """The ordered queue of one run's events; driven by the arbiter loop."""

    def __init__(self, run_id: str, send: Send, timers: Timers, count: Count, *,
                 batch_logs: bool, batch_interval_s: float, batch_limit: int,
                 cap_bytes: int, on_withhold: Callable[[str, str], None],
                 on_finished: Callable[[], None], frame_limit: int | None = None,
                 fit: Fit | None = None, end: End | None = None) -> None:
        self.run_id = run_id
        self._send = send
        self._timers = timers
        self._count = count
        self.batch_logs = batch_logs
        self.batch_interval_s = batch_interval_s
        self.batch_limit = max(1, batch_limit)
        self.cap_bytes = cap_bytes
        self._on_withhold = on_withhold
        self._on_finished = on_finished
        # the payload's share of a frame (None: no limit); fit and end: see the docstring
        self.payload_limit = None if not frame_limit else frame_limit - ENVELOPE_BYTES
        self._fit = fit
        self._end = end
        self.lightning_steps: dict[str, str] = {}  # step_id → job_id Lightning has open
        self.ended = False  # the run was ended early: later events are not sent
        self._ending: str | None = None  # why, until the events that end it are queued
        self.queue: deque[Outgoing] = deque()
        self.bytes = 0
        self.inflight: InFlight | None = None
        self.tag = 0
        self.channel_up = False
        self.batch_due: float | None = None
        self.finished = False
        self.dropped = 0  # log lines dropped over the cap

    # -- input ------------------------------------------------------------------------------
    def add(self, events: list[tuple[str, dict[str, Any]]], log_kind: str = LOG) -> None:
        """Queue events in order; ``log_kind`` says whether their log lines may be batched.
        Each is made to fit the frame limit here, once."""
        if self.ended:
            return
        for event, payload in events:
            item = self._fitted(event, payload, log_kind)
            if item is None:
                return  # the run was ended instead
            for one in item:
                self.queue.append(one)
                self.bytes += one.size
        self._enforce_cap()
        self.pump()

    def _outgoing(self, event: str, payload: dict[str, Any], log_kind: str) -> Outgoing:
        kind = log_kind if event == RUN_LOG else LIFECYCLE
        text = _ENCODER.encode(payload)
        item = Outgoing(event, payload, kind, text, len(text), UTF8_MAX * len(text))
        limit = self.payload_limit
        if limit is not None and item.wire > limit and item.size <= limit:
            item.wire = len(text.encode())  # large: measured exactly
        elif limit is not None and item.size > limit:
            item.wire = item.size  # over the limit whatever its characters take
        return item

    def _fitted(self, event: str, payload: dict[str, Any],
                log_kind: str) -> list[Outgoing] | None:
        """The event ready to queue, made smaller when its frame would be too big; None when
        it cannot be, and the run was ended instead."""
        item = self._outgoing(event, payload, log_kind)
        limit = self.payload_limit
        if limit is None or item.wire <= limit:
            return [item]
        smaller = self._fit(event, payload, limit) if self._fit is not None else None
        items = [self._outgoing(e, p, log_kind) for e, p in smaller or []]
        if smaller is None or any(i.wire > limit for i in items):
            self.end_run(event, f"Lightning cannot take the run's {event} event: its "
                         f"{item.wire}-byte payload is over the frame limit "
                         f"(WORKER_MAX_FRAME_BYTES) even when made smaller")
            return None
        log.warning("run %s: %s of %d bytes is over the frame limit; sent made smaller (%s)",
                    self.run_id, event, item.wire, ", ".join(e for e, _ in smaller))
        self._count("event_fitted", event=event)
        return items

    def end_run(self, event: str, why: str, refused_in_flight: bool = False) -> None:
        """``event`` cannot be delivered: nothing more of the run's own is sent; the run ends
        as an exception saying ``why`` (the open steps closed first). An event already in
        flight (not the refused one) still gets its reply first."""
        log.error("run %s: %s; the run ends as an exception", self.run_id, why)
        self._count("frame_too_big", event=event)
        self.ended = True
        if refused_in_flight:
            self.inflight = None
        self.batch_due = None
        self.queue.clear()
        self.bytes = 0
        self._ending = why
        if self.inflight is None:
            self._queue_ending()

    def _queue_ending(self) -> None:
        """The events that end the run early, made once nothing is in flight (so the steps
        Lightning has open are known)."""
        why, self._ending = self._ending, None
        if why is None or self._end is None:
            return
        for event, payload in self._end(why, dict(self.lightning_steps)):
            item = self._outgoing(event, payload, LINE)
            self.queue.append(item)
            self.bytes += item.size
        self.pump()

    def pause(self) -> None:
        """The socket dropped: hold everything until the run channel is joined again."""
        self.channel_up = False

    def resume(self) -> None:
        self.channel_up = True
        flight = self.inflight
        if flight is not None and flight.await_rejoin:
            flight.await_rejoin = False
            self._transmit(flight)
        self.pump()

    def scrub_dataclip(self, dataclip_id: str) -> None:
        """A dataclip was not stored after all: queued events must not point at it."""
        for item in self.queue:
            if item.payload.get("input_dataclip_id") == dataclip_id:
                del item.payload["input_dataclip_id"]
                item.text = None
            if item.payload.get("final_dataclip_id") == dataclip_id:
                del item.payload["final_dataclip_id"]
                item.text = None

    def abandon(self, why: str) -> int:
        """Give up on everything not yet delivered (the run token expired); returns how many."""
        lost = len(self.queue) + (1 if self.inflight else 0)
        for item in self.queue:
            self._count("event_dropped", reason=why, event=item.event)
        self.queue.clear()
        self.bytes = 0
        self.inflight = None
        self.finished = True
        self._report_dropped()
        return lost

    # -- sending ------------------------------------------------------------------------------
    def pump(self) -> None:
        """Send the next event (or batch) if nothing is waiting for a reply."""
        if self.finished or self.inflight is not None or not self.channel_up or not self.queue:
            return
        head = self.queue[0]
        if head.kind == LOG and self.batch_logs:
            self._pump_batch()
            return
        item = self._pop()
        if item.kind == LIFECYCLE:
            self._start(InFlight([item], item.event, item.payload, item.text))
        elif self.batch_logs:
            self._start(InFlight([item], BATCH_LOGS, batch_payload(self.run_id, [item.payload])))
        else:
            self._start(InFlight([item], RUN_LOG, item.payload, item.text))

    def _pump_batch(self) -> None:
        lines = 0
        room = None if self.payload_limit is None else self.payload_limit - ENVELOPE_BYTES
        for item in self.queue:
            if item.kind != LOG or lines == self.batch_limit:
                break
            if room is not None:
                room -= item.wire + 1
                if room < 0 and lines:
                    break  # the batch is as large as a frame may be: it goes now
            lines += 1
        now = time.monotonic()
        waiting_behind = lines < len(self.queue)  # another event, or lines for the next frame
        if lines >= self.batch_limit or waiting_behind or (
                self.batch_due is not None and now >= self.batch_due):
            items = [self._pop() for _ in range(lines)]
            self._start(InFlight(items, BATCH_LOGS,
                                 batch_payload(self.run_id, [i.payload for i in items])))
        elif self.batch_due is None:
            self.batch_due = now + self.batch_interval_s
            self._timers.call_at(self.batch_due, self.pump)

    def _pop(self) -> Outgoing:
        item = self.queue.popleft()
        self.bytes -= item.size
        return item

    def _start(self, flight: InFlight) -> None:
        self.batch_due = None
        self.inflight = flight
        self._transmit(flight)

    def _transmit(self, flight: InFlight) -> None:
        self.tag += 1
        self._send(flight.event, flight.payload, self.tag, flight.encoded)

    # -- replies ------------------------------------------------------------------------------
    def on_reply(self, tag: int, reply: Reply) -> None:
        flight = self.inflight
        if flight is None or tag != self.tag or self.finished:
            return  # a reply to a copy we no longer wait for
        if reply.status == "ok":
            self._note_steps(flight)
            self._next()
        elif reply.status == TOO_BIG:
            size = (reply.response or {}).get("frame_bytes", "?")
            self.end_run(flight.event, f"Lightning refused the run's {flight.event} event as "
                         f"too big: it closed the socket on its {size}-byte frame (close code "
                         f"1009, message too big); WORKER_MAX_FRAME_BYTES should be Lightning's "
                         f"max_frame_size", refused_in_flight=True)
        elif reply.status == "timeout":
            self._on_timeout(flight)
        elif flight.resent:
            log.info("run %s: %s was refused when sent again: the first copy landed",
                     self.run_id, flight.event)
            self._next()
        elif flight.event == STEP_COMPLETE and not flight.without_dataclip \
                and "output_dataclip_id" in flight.payload:
            self._resend_without_dataclip(flight, reply)
        else:
            log.warning("run %s: Lightning refused %s: %s", self.run_id, flight.event,
                        describe_failure(flight.event, reply))
            self._count("event_refused", event=flight.event)
            self._next()

    def _note_steps(self, flight: InFlight) -> None:
        """Which steps Lightning has open, to close them should the run have to end early."""
        if flight.event == STEP_START:
            self.lightning_steps[flight.payload["step_id"]] = flight.payload["job_id"]
        elif flight.event == STEP_COMPLETE:
            self.lightning_steps.pop(flight.payload["step_id"], None)

    def _on_timeout(self, flight: InFlight) -> None:
        if not self.channel_up:
            flight.await_rejoin = True  # the socket is down: this is not Lightning's silence
            return
        if flight.event in LOG_EVENTS:
            log.warning("run %s: no reply to %s within the message timeout; not sent again "
                        "(it may have landed)", self.run_id, flight.event)
            self._count("event_dropped", reason="timeout", event=flight.event)
            self._next()
            return
        log.warning("run %s: no reply to %s within the message timeout; sending it again",
                    self.run_id, flight.event)
        self._count("event_resent", event=flight.event)
        flight.resent = True
        self._transmit(flight)

    def _resend_without_dataclip(self, flight: InFlight, reply: Reply) -> None:
        log.warning("run %s: Lightning refused step:complete (%s); sending it again without "
                    "the output dataclip", self.run_id, describe_failure(flight.event, reply))
        self._count("event_refused", event=flight.event)
        payload = dict(flight.payload)
        dataclip_id = payload.pop("output_dataclip_id")
        payload.pop("output_dataclip", None)
        flight.payload, flight.encoded, flight.without_dataclip = payload, None, True
        self._on_withhold(payload["step_id"], dataclip_id)
        self.scrub_dataclip(dataclip_id)
        self._transmit(flight)

    def _next(self) -> None:
        flight = self.inflight
        self.inflight = None
        if flight is not None and flight.event == RUN_COMPLETE:
            self.finished = True
            self._report_dropped()
            self._on_finished()
            return
        if self._ending is not None:
            self._queue_ending()
            return
        self.pump()

    def _enforce_cap(self) -> None:
        if self.bytes <= self.cap_bytes:
            return
        dropped = 0
        for item in list(self.queue):
            if self.bytes <= self.cap_bytes:
                break
            if item.kind != LIFECYCLE:
                self.queue.remove(item)
                self.bytes -= item.size
                dropped += 1
                self._count("event_dropped", reason="memory", event=item.event)
        if dropped and not self.dropped:
            log.warning("run %s: more than %g MB of events waiting for Lightning: dropping log "
                        "lines, oldest first (lifecycle events are kept)", self.run_id,
                        round(self.cap_bytes / MB, 3))
        self.dropped += dropped

    def _report_dropped(self) -> None:
        if self.dropped:
            log.warning("run %s: %d log lines were dropped in all (over the %g MB cap of "
                        "events waiting for Lightning)", self.run_id, self.dropped,
                        round(self.cap_bytes / MB, 3))
