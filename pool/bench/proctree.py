"""CPU and memory of a pool's process tree (supervisor → executors → shims), with psutil.

CPU is split in two: the supervisor's own, and everything under it. Processes that already
exited still count: a reaped child's CPU lands in its parent's ``children_*`` times (a cold
shim in its executor's, a recycled executor in the supervisor's), so the split stays right
across recycling as long as each parent waits for its children, which the pool does.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
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


def cpu(pid: int) -> CpuSample:
    sup = psutil.Process(pid)
    own = sup.cpu_times()
    rest = own.children_user + own.children_system
    for child in sup.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            # a live child's reaped children are in its own children_* times
            rest += times.user + times.system + times.children_user + times.children_system
    return CpuSample(own.user + own.system, rest)


def memory(pid: int) -> MemorySample:
    """PSS (shared pages split between their users) and RSS, summed over the tree.

    psutil.AccessDenied when a process of the tree cannot be read (it is not dumpable and we
    hold no CAP_SYS_PTRACE over it): a sum without it would be a wrong figure, not a lower one.
    """
    sup = psutil.Process(pid)
    info = sup.memory_full_info()
    sup_pss, rest_pss, rss, count = info.pss / MB, 0.0, info.rss / MB, 1
    for child in sup.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
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
        self.denied: str | None = None  # why the memory could not be read, if it could not
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-memory")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.progress() if self.progress else 0
                self.samples.append((done, memory(self.pid)))
            except psutil.AccessDenied as exc:
                self.denied = f"access to /proc/{exc.pid}/smaps_rollup denied"
            except psutil.Error:
                pass  # a process ended while being read: the next sample has the rest
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


class ShimCounter:
    """Counts the shims a pool starts: polls every ``interval_s`` for Node processes running
    ``shim.mjs`` among the executors' children (a shim lives at least through a boot, far longer
    than the interval), keeping every pid ever seen and the ones alive now.

    Cheap on purpose, because it shares the benchmark's process (and GIL) with the dev server:
    it reads the executors' ``/proc/<pid>/task/*/children`` files and the cmdline of children not
    yet known as shims, and looks for new executors only every second."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.seen: set[int] = set()
        self.live: frozenset[int] = frozenset()
        self._executors: list[int] = []
        self._executors_at = 0.0
        self._shim: dict[int, bool] = {}  # pids known to be shims
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-shims")

    def _children(self, pid: int) -> list[int]:
        out: list[int] = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), \
                        open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                    out += [int(p) for p in fh.read().split()]
        except OSError:
            pass
        return out

    def _is_shim(self, pid: int) -> bool:
        """A ``yes`` is kept; a ``no`` is asked again (right after a spawn the child is still
        a copy of its executor, until it execs Node)."""
        if pid in self._shim:
            return True
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            return False
        if any(a.endswith(b"shim.mjs") for a in args):
            self._shim[pid] = True
            return True
        return False

    def _shims(self) -> frozenset[int]:
        if time.monotonic() - self._executors_at > 1.0:
            self._executors = self._children(self.pid)
            self._executors_at = time.monotonic()
        return frozenset(p for e in self._executors for p in self._children(e)
                         if self._is_shim(p))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.live = self._shims()
            self.seen |= self.live
            self._stop.wait(self.interval_s)

    def begin(self) -> frozenset[int]:
        """Start a window now: forget what was seen before (a shim that ended while the pool
        was settling is no boot of the window); the live shims it begins with."""
        start = self.live
        self.seen = set(start)
        return start

    def settle(self, count: int | None, still_s: float = 0.5, timeout_s: float = 60.0) -> bool:
        """Wait until the live shims stay the same set for ``still_s`` (and number ``count``,
        when given): a steady state, every standby booted. False if it never came."""
        deadline = time.monotonic() + timeout_s
        since, last = time.monotonic(), self.live
        while time.monotonic() < deadline:
            time.sleep(self.interval_s)
            now = self.live
            if now != last or (count is not None and len(now) != count):
                since, last = time.monotonic(), now
            elif time.monotonic() - since >= still_s:
                return True
        return False

    def __enter__(self) -> ShimCounter:
        self.live = self._shims()
        self.seen |= self.live
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

