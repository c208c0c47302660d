"""``WORKER_WORKLOOPS`` and ``WORKER_BACKOFF``: parsed and checked once, at start-up.

ws-worker's formats (reference §5.4): workloops are space-separated ``<queues>:<count>``
tokens where ``<queues>`` is ``name(>name)*`` and ``*`` (any queue) may only come last;
backoff is ``min/max`` in seconds. A typo here would silently starve a queue, so every
mistake is an error that names the offending token.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class WorkloopError(ValueError):
    """WORKER_WORKLOOPS or WORKER_BACKOFF cannot be used; the message says which part is wrong."""


@dataclass(frozen=True)
class Workloop:
    """One claim loop: its queue preference chain and how many runs it may hold at once."""

    queues: tuple[str, ...]
    capacity: int

    @property
    def name(self) -> str:
        """The chain as ws-worker writes it in the join payload, e.g. ``manual>*``."""
        return ">".join(self.queues)


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait between empty claims: starts at ``min_s``, grows ×1.15 up to ``max_s``."""

    min_s: float
    max_s: float


def default_workloops(capacity: int) -> list[Workloop]:
    """ws-worker's default: one loop over ``manual`` then any queue, with every slot."""
    if capacity < 1:
        raise WorkloopError(f"capacity must be at least 1, got {capacity}")
    return [Workloop(("manual", "*"), capacity)]


def parse_workloops(text: str) -> list[Workloop]:
    """``"fast_lane:1 manual>*:4"`` → two workloops; raises WorkloopError on any bad token."""
    tokens = text.split()
    if not tokens:
        raise WorkloopError("WORKER_WORKLOOPS is empty; expected e.g. 'fast_lane:1 manual>*:4'")
    loops = [_parse_token(token) for token in tokens]
    seen: set[str] = set()
    for loop in loops:
        if loop.name in seen:
            log.warning("WORKER_WORKLOOPS lists %r more than once; each gets its own slots",
                        loop.name)
        seen.add(loop.name)
    return loops


def _parse_token(token: str) -> Workloop:
    chain, sep, count = token.rpartition(":")
    if not sep or not chain:
        raise WorkloopError(f"workloop {token!r} has no ':<count>' (expected e.g. 'manual>*:4')")
    try:
        capacity = int(count)
    except ValueError:
        raise WorkloopError(f"workloop {token!r}: count {count!r} is not an integer") from None
    if capacity < 1:
        raise WorkloopError(f"workloop {token!r}: count must be at least 1")
    queues = tuple(chain.split(">"))
    for i, name in enumerate(queues):
        if name == "*":
            if i != len(queues) - 1:
                raise WorkloopError(f"workloop {token!r}: '*' may only be the last queue")
        elif not _QUEUE_NAME.match(name):
            raise WorkloopError(
                f"workloop {token!r}: queue name {name!r} may only use letters, digits and '_'"
            )
    return Workloop(queues, capacity)


def parse_backoff(text: str) -> Backoff:
    """``"1/10"`` → 1 s .. 10 s between empty claims."""
    min_text, sep, max_text = text.strip().partition("/")
    if not sep:
        raise WorkloopError(f"WORKER_BACKOFF {text!r} must be 'min/max' in seconds, e.g. '1/10'")
    try:
        low, high = float(min_text), float(max_text)
    except ValueError:
        raise WorkloopError(f"WORKER_BACKOFF {text!r}: min and max must be numbers") from None
    if low < 0 or high < 0:
        raise WorkloopError(f"WORKER_BACKOFF {text!r}: seconds cannot be negative")
    if low > high:
        raise WorkloopError(f"WORKER_BACKOFF {text!r}: min is larger than max")
    return Backoff(low, high)


def queue_join_payload(workloops: list[Workloop]) -> dict[str, Any]:
    """The ``worker:queue`` join payload: total capacity and each chain's slots."""
    queues: dict[str, int] = {}
    for loop in workloops:
        queues[loop.name] = queues.get(loop.name, 0) + loop.capacity
    return {"capacity": sum(loop.capacity for loop in workloops), "queues": queues}
