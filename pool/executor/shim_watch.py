"""Seeing an idle shim die when it dies, not when the next run is handed to it.

A shim killed while idle (``kill -9``, the kernel's OOM killer) used to be noticed only by the
run given to it next, which then "crashed" at once. The executor's loop waits on its inbox, so
a thread here waits on the idle shim's pidfd (readable once the process has exited, reaped or
not; it never reaps: the shim's owner does) and posts ``shim_died(pid)`` to the inbox. The
loop then replaces the shim and reports ``ready`` only once the new one is warm.

:func:`is_alive` is the same check made once, when a run is handed to a shim: it covers a
shim that died between the watcher's notice and the run (or, in ``strict`` mode, the standby
killed while the previous run was executing, when nothing watches it).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable


def is_alive(pid: int) -> bool:
    """True while process ``pid`` has not exited (a zombie has)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfds (Linux before 5.3): a zombie then still counts as alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        readable, _, _ = select.select([fd], [], [], 0)
        return not readable
    finally:
        os.close(fd)


class ShimWatch:
    """Watches one pid at a time (the executor's idle shim) on a thread of its own."""

    def __init__(self, on_death: Callable[[int], None]) -> None:
        self._on_death = on_death
        self._lock = threading.Lock()
        self._wanted: int | None = None
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe already means "look again"
        self._thread = threading.Thread(target=self._loop, name="shim-watch", daemon=True)
        self._thread.start()

    def watch(self, pid: int | None) -> None:
        """Watch ``pid`` from now on (None: nothing); cheap when it is already watched."""
        with self._lock:
            if pid == self._wanted:
                return
            self._wanted = pid
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"w")

    def close(self) -> None:
        with self._lock:
            self._closed, self._wanted = True, None
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"c")
        self._thread.join(timeout=2)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _loop(self) -> None:
        watched: int | None = None
        pidfd: int | None = None
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    wanted = self._wanted
                if wanted != watched:
                    if pidfd is not None:
                        os.close(pidfd)
                    watched, pidfd = wanted, None
                    if watched is not None:
                        try:
                            pidfd = os.pidfd_open(watched)
                        except ProcessLookupError:
                            self._died(watched)
                            watched = None
                            continue
                        except OSError:  # no pidfds here: runs still check is_alive
                            return
                fds = [self._wake_r] + ([pidfd] if pidfd is not None else [])
                readable, _, _ = select.select(fds, [], [])
                if self._wake_r in readable:
                    os.read(self._wake_r, 4096)
                if pidfd is not None and pidfd in readable and watched is not None:
                    os.close(pidfd)
                    pidfd = None
                    self._died(watched)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _died(self, pid: int) -> None:
        with self._lock:
            if self._wanted == pid:
                self._wanted = None
        self._on_death(pid)
