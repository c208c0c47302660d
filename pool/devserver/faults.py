"""Injected faults: what later issues' tests use to make Lightning misbehave on cue.

A fault matches an incoming event by name (and, optionally, the run whose channel it arrives
on) and fires ``times`` times: drop the socket before replying (and, with ``seconds``, refuse
new sockets that long), answer with an error instead of handling the event, handle it but
hold the reply back, or stall it: leave it unhandled for ``seconds`` (a slow Lightning node), so
a socket that dies meanwhile never had it handled at all (a stalled ``phx_join`` never joins).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

KINDS = ("drop", "error", "hold", "stall")


@dataclass
class Fault:
    kind: str
    event: str
    run_id: str | None
    times: int
    response: Any = None
    seconds: float = 0.0

    def matches(self, event: str, topic: str) -> bool:
        return self.event == event and (self.run_id is None or topic == f"run:{self.run_id}")


class Faults:
    """A thread-safe list of armed faults, consumed as they fire."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[Fault] = []

    def arm(self, kind: str, event: str, run_id: str | None = None, times: int = 1,
            response: Any = None, seconds: float = 0.0) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (one of {', '.join(KINDS)})")
        if not isinstance(event, str) or not event:
            raise ValueError("a fault needs the event name it fires on")
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            raise ValueError(f"times must be a positive integer, got {times!r}")
        if not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"seconds must be a non-negative number, got {seconds!r}")
        with self._lock:
            self._armed.append(Fault(kind, event, run_id, times, response, float(seconds)))

    def take(self, event: str, topic: str) -> Fault | None:
        """The first armed fault for this event on this topic, counting one firing of it."""
        with self._lock:
            for fault in self._armed:
                if fault.matches(event, topic):
                    fault.times -= 1
                    if fault.times == 0:
                        self._armed.remove(fault)
                    return fault
        return None
