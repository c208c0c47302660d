"""The run's watchdog: wall-clock timeout and RSS growth, checked from Python.

Both limits must hold even when the job never yields: a synchronous loop blocks the shim's
event loop, so neither the runtime's timers nor the shim can enforce them. The executor asks
the watchdog after every shim event and at least every ``interval`` seconds; a verdict means
SIGKILL the shim.

Memory: V8's ``--max-old-space-size`` bounds the JS heap but not Buffers, typed arrays or
native memory (kit #497, #888), so the RSS of the shim is sampled too. It fires when RSS grows
more than the run's limit above the RSS the shim had when the run started (a warm shim's own
~100 MB is not the job's). Sampling is cheap (one read of /proc/<pid>/statm) so the interval is
short: the overshoot of a fast allocator is bounded by what it can touch in one interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable

TIMEOUT = "timeout"
OOM = "oom"
MB = 1024 * 1024


class Watchdog:
    def __init__(self, timeout_ms: int, memory_mb: int, rss: Callable[[], int],
                 interval: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_ms = timeout_ms
        self.memory_mb = memory_mb
        self.interval = interval
        self._rss = rss
        self._clock = clock
        self.deadline = clock() + timeout_ms / 1000
        self.baseline = self._sample()
        self.peak = self.baseline
        self._next_sample = clock() + interval

    def _sample(self) -> int:
        try:
            return self._rss()
        except Exception:  # noqa: BLE001 - the shim is gone; its exit is reported by the driver
            return 0

    def check(self) -> str | None:
        """``"timeout"``, ``"oom"`` or None; samples RSS when an interval has passed."""
        now = self._clock()
        if now >= self.deadline:
            return TIMEOUT
        if now >= self._next_sample:
            self._next_sample = now + self.interval
            rss = self._sample()
            self.peak = max(self.peak, rss)
            if rss - self.baseline > self.memory_mb * MB:
                return OOM
        return None

    def wait_time(self) -> float:
        """How long the executor may block before it must call ``check`` again."""
        now = self._clock()
        return max(0.0, min(self.deadline, self._next_sample) - now)
