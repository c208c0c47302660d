"""CPU and memory of a pool's process tree (supervisor → executors → shims), with psutil.

CPU is split in two: the supervisor's own, and everything under it. Processes that already
exited still count: a reaped executor's CPU lands in the supervisor's ``children_*`` times, and
``CpuTracker`` samples every descendant so a shim that dies with its sandbox (whose CPU reaches
nobody's ``children_*``) counts with its last sample.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class CpuSample:
    supervisor_s: float
    rest_s: float          # executors + shims, live and reaped


@dataclass(frozen=True)
class MemorySample:
    supervisor_pss_mb: float
    rest_pss_mb: float
    total_rss_mb: float
    processes: int


def memory(pid: int) -> MemorySample:
    """PSS (shared pages split between their users) and RSS, summed over the tree."""
    sup = psutil.Process(pid)
    info = sup.memory_full_info()
    sup_pss, rest_pss, rss, count = info.pss / MB, 0.0, info.rss / MB, 1
    for child in sup.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child_info = child.memory_full_info()
            rest_pss += child_info.pss / MB
            rss += child_info.rss / MB
            count += 1
    return MemorySample(sup_pss, rest_pss, rss, count)


class MemorySampler:
    """Samples the tree's memory every ``interval_s`` on a thread; keeps every sample, with
    the number of runs completed when it was taken (``progress`` is read, never written)."""

    def __init__(self, pid: int, interval_s: float = 1.0,
                 progress: Callable[[], int] | None = None) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.progress = progress
        self.samples: list[tuple[int, MemorySample]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-memory")

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                done = self.progress() if self.progress else 0
                self.samples.append((done, memory(self.pid)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def peak(self) -> MemorySample | None:
        """The sample with the highest total PSS (the figure a memory budget must hold)."""
        if not self.samples:
            return None
        return max((s for _, s in self.samples),
                   key=lambda s: s.supervisor_pss_mb + s.rest_pss_mb)


class CpuTracker:
    """CPU of the tree over a period, counting processes that die unreaped by the tree.

    A sandboxed shim's CPU never reaches its executor's ``children_*`` times: bwrap exits
    without reaping its own init, and processes killed with the sandbox are reaped by the
    kernel without accounting. So every descendant's own CPU is sampled every ``interval_s``
    and a process that vanishes counts with its last sample, sandboxed or not (what it used
    after that sample is missed: a shim is idle between its run's end and its kill, so little
    is; a process that lives less than one interval is missed whole, alike in every mode).
    """

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._first: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._sup0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-cpu")

    def _sample(self) -> None:
        try:
            family = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return
        for proc in family:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                key = (proc.pid, proc.create_time())
                self._last[key] = t.user + t.system  # own only: a reaped child is sampled too

    def _supervisor(self) -> tuple[float, float]:
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system, t.children_user + t.children_system

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> CpuTracker:
        self._sample()
        self._first = dict(self._last)
        self._sup0, self._reaped0 = self._supervisor()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()

    def result(self) -> CpuSample:
        sup, reaped = self._supervisor()
        rest = sum(v - self._first.get(k, 0.0) for k, v in self._last.items())
        return CpuSample(sup - self._sup0, rest + reaped - self._reaped0)
