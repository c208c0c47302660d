"""CPU and memory of a pool's process tree (supervisor → executors → shims), with psutil.

CPU is split in two: the supervisor's own, and everything under it. Processes that already
exited still count: a reaped executor's CPU lands in the supervisor's ``children_*`` times, and
``CpuTracker`` samples every descendant so a shim that dies with its sandbox (whose CPU reaches
nobody's ``children_*``) counts with its last sample.
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
    ``shim.mjs`` below the executors (a shim lives at least through a boot, far longer
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
        # Node itself, not the bubblewrap around it (whose argv names the script too)
        if os.path.basename(args[0]).startswith(b"node") and \
                any(a.endswith(b"shim.mjs") for a in args):
            self._shim[pid] = True
            return True
        return False

    def _below(self, pid: int, depth: int = 4) -> list[int]:
        """Descendants of an executor down to its shims: a sandboxed shim is bubblewrap's
        grandchild, an unsandboxed one its child."""
        found = []
        for child in self._children(pid):
            found.append(child)
            if depth > 1 and child not in self._shim:
                found += self._below(child, depth - 1)
        return found

    def _shims(self) -> frozenset[int]:
        if time.monotonic() - self._executors_at > 1.0:
            self._executors = self._children(self.pid)
            self._executors_at = time.monotonic()
        return frozenset(p for e in self._executors for p in self._below(e)
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
