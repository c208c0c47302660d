"""The executor's inbox: supervisor messages and internal wake-ups, in one queue.

A thread reads the socketpair (blocking reads, so the loop never waits on two things at once)
and only enqueues; the executor's loop decides (DESIGN.md, "One loop owns the state"). The
standby thread enqueues a wake-up when a shim finished booting, the shim watcher a notice
when the idle shim died.
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
from typing import Any

from pool.executor import protocol

MESSAGE, EOF, WAKE, SHIM_DIED = "message", "eof", "wake", "shim-died"


class Inbox:
    def __init__(self, sock: socket.socket) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._sock = sock
        self._thread = threading.Thread(target=self._read, name="supervisor-reader", daemon=True)
        self._thread.start()

    def get(self, timeout: float | None = None) -> tuple[str, Any] | None:
        """``(kind, message)``, or None after ``timeout`` seconds with nothing to read."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def wake(self) -> None:
        self._queue.put((WAKE, None))

    def shim_died(self, pid: int) -> None:
        """The shim being watched (shim_watch.py) exited: the loop replaces it."""
        self._queue.put((SHIM_DIED, pid))

    def _read(self) -> None:
        while True:
            try:
                message = protocol.recv(self._sock)
            except protocol.ProtocolError as exc:
                if str(exc).startswith("frame of"):  # framing lost: nothing after it can be read
                    self._queue.put((EOF, f"unreadable stream from the supervisor: {exc}"))
                    return
                print(f"executor: ignoring a bad message from the supervisor: {exc}",
                      file=sys.stderr, flush=True)
                continue
            except OSError as exc:
                self._queue.put((EOF, f"supervisor socket failed: {exc}"))
                return
            if message is None:
                self._queue.put((EOF, "the supervisor closed the socket"))
                return
            self._queue.put((MESSAGE, message))
