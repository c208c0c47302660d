"""A read-only picture of the pool, published by the arbiter loop for other threads.

The control socket, ``/readyz`` and ``/metrics`` read :class:`PoolSnapshot` instead of the
loop's live state: the loop swaps in a fresh immutable snapshot after each turn, so readers
need no lock and never see a half-updated pool. Commands go the other way through
:class:`PoolHandle.submit`, answered by the loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

WARM_STATES = ("idle", "reserved", "busy", "warming")


@dataclass(frozen=True)
class ExecutorView:
    """One executor: ``state`` is booting | idle | reserved | busy | warming | stopping
    (``warming``: its run is over, it is readying its next shim; see executors.py)."""

    pid: int
    state: str
    run_id: str | None = None
    runs_done: int = 0
    started_at: float = 0.0  # wall clock, seconds
    shim_pid: int | None = None
    id: int = 0


@dataclass(frozen=True)
class PoolSnapshot:
    executors: tuple[ExecutorView, ...] = ()
    claims_in_flight: int = 0  # total demand of claims awaiting Lightning's reply
    runs_by_reason: Mapping[str, int] = field(default_factory=dict)
    queue_joined: bool = False
    draining: bool = False  # no more claims: `poolctl drain`, or stopping
    stopping: bool = False  # the pool exits once its runs are reported (SIGTERM, stop)
    size: int = 0  # executors the pool aims to keep
    pid: int = 0  # the supervisor's
    connected: bool = False  # the Lightning socket is open
    active_runs: tuple[str, ...] = ()  # run ids joined and not yet completed
    counters: Mapping[str, int] = field(default_factory=dict)  # see Arbiter.count
    sandbox: str = ""  # the sandbox shims run in: uid | namespaces | none

    def executors_by_state(self) -> dict[str, int]:
        counts = Counter(e.state for e in self.executors)
        return {state: counts.get(state, 0)
                for state in ("booting", "idle", "reserved", "busy", "warming", "stopping")}

    def readiness(self) -> tuple[bool, str]:
        """Ready = queue joined, at least one warm executor, not draining; else why not."""
        if self.draining:
            return False, "draining"
        if not self.queue_joined:
            return False, "queue channel not joined"
        if not any(e.state in WARM_STATES for e in self.executors):
            return False, "no executor is ready yet"
        return True, "ready"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the control socket's ``status``)."""
        data = asdict(self)
        data["runs_by_reason"] = dict(self.runs_by_reason)
        data["counters"] = dict(self.counters)
        data["active_runs"] = list(self.active_runs)
        return data


class PoolHandle(Protocol):
    """What observers hold: the latest snapshot, and a way to ask the loop to do something."""

    def snapshot(self) -> PoolSnapshot: ...

    def submit(self, name: str, **args: Any) -> Future[Any]: ...
