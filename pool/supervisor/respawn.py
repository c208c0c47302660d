"""The restart-storm guard: how fast dead executors may be replaced.

An executor that dies at once after starting (a broken adaptor repo mounted late, a node
binary that segfaults, an OOM loop) must not make the supervisor fork in a tight loop, burning
CPU and flooding the logs, which is what Celery's ``restart_state(maxR, maxT)`` and uWSGI's
respawn penalty guard against. Policy: up to ``limit`` respawns in any ``window_s`` seconds
go ahead at once; past that, each further respawn waits 1 s, 2 s, 4 s, ... up to
``max_backoff_s``; once a whole window passes with no respawn the guard is calm again.
Boot failures (exit code 3) are not retried at all; that is the arbiter's business.
"""

from __future__ import annotations

from collections import deque


class RespawnGuard:
    """Pure bookkeeping, owned by the arbiter loop (no locks, no clock of its own)."""

    def __init__(self, limit: int = 10, window_s: float = 30.0, first_backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self._times: deque[float] = deque()
        self._backoff = 0.0
        self._not_before = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds until the next respawn may happen (0 = now)."""
        return max(0.0, self._not_before - now)

    def record(self, now: float) -> bool:
        """Note a respawn made at ``now``; True if it tripped the guard (later ones wait)."""
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        if not self._times:
            self._backoff = 0.0
        self._times.append(now)
        if len(self._times) < self.limit:
            return False
        self._backoff = min(self.max_backoff_s, self._backoff * 2 or self.first_backoff_s)
        self._not_before = now + self._backoff
        return True
