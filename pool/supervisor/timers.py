"""Timers for the arbiter loop: callbacks due at a monotonic time, fired by the loop itself.

The loop sleeps until the earliest timer is due, so a backoff, a boot deadline or
a log batch's interval needs no thread of its own (DESIGN: one loop owns the state).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any


class Timer:
    """A scheduled call; ``cancel()`` keeps it from firing."""

    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """A heap of :class:`Timer`; owned by the loop thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(when, fn, args)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(time.monotonic() + max(0.0, delay), fn, *args)

    def next_due(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def fire_due(self, now: float) -> int:
        """Run every timer due by ``now`` (timers they schedule for later wait their turn);
        returns how many ran."""
        fired = 0
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.fn(*timer.args)
                fired += 1
        return fired
