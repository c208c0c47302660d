"""Resizing a running pool: ``poolctl scale N``, SIGTTIN and SIGTTOU.

With workloops (``fast_lane:1 manual>*:4``) the size is the sum of their slots. A resize
changes only the last workloop, the catch-all by convention, so the lanes an operator
reserved for urgent queues keep their slots; it is refused when the last one would be left
with no slot. The size asked for live is remembered and applied again after SIGHUP reloads the
settings (gunicorn forgets TTIN/TTOU on HUP, a known complaint: gunicorn #716).
"""

from __future__ import annotations

from dataclasses import replace

from pool.lightning.workloops import Workloop


def resize(workloops: tuple[Workloop, ...], size: int) -> tuple[Workloop, ...]:
    """The workloops with the last one resized so the slots add up to ``size``.

    Raises ValueError (the message is shown to the operator) when that is impossible.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    *others, last = workloops
    held = sum(loop.capacity for loop in others)
    if size - held < 1:
        raise ValueError(f"cannot scale to {size}: the other workloops hold {held} slot(s) "
                         f"and the last one ({last.name}) needs at least 1, so the size must "
                         f"be at least {held + 1}")
    return (*others, replace(last, capacity=size - held))
