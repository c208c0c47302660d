"""One thread's select() loop: file descriptors, calls from other threads, nothing else.

Why not a queue per I/O thread: on the supervisor's hot path every Lightning frame and every
executor message used to cross two threads (a blocking reader, then the owner) before anything
was decided, and each crossing is a futex wake plus a GIL hand-over. Here the owner itself
waits on the sockets, reads what is ready and acts, so a run's thirty-odd round trips cost
no thread switch at all (issue 7's hot-path profile).

Timers stay with their owners (the arbiter's :class:`~pool.supervisor.timers.Timers`, the
Phoenix socket's deadlines): :meth:`run_once` only sleeps up to the timeout it is given.
Other threads (control socket, HTTP, a connector) hand work over with
:meth:`call_from_thread`, which wakes the loop through a pipe; signal handlers may use it too.
It is epoll itself, not :mod:`selectors` (Linux only, as the pool is): the wrapper's per-turn
bookkeeping showed in the profile of a loop that turns some thirty times per run.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

Callback = Callable[[], None]
_READ = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP  # errors and EOF read as readable
_WRITE = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


class EventLoop:
    """Readers and writers by file descriptor, plus a thread-safe call queue.

    Everything but :meth:`call_from_thread` must be called from the thread that runs the loop
    (the one that called :meth:`bind`, or the first to call :meth:`run_once`).
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._calls: SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = SimpleQueue()
        self._woken = False
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._masks: dict[int, int] = {}  # what epoll watches for, per descriptor
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread: int | None = None
        self.closed = False

    # -- any thread ------------------------------------------------------------------------------
    def call_from_thread(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread soon; safe from any thread and from signal
        handlers. One byte on the pipe wakes a sleeping loop; none while a wake is pending.
        Dropped once the loop is closed (its pipe's descriptors may belong to others by then)."""
        if self.closed:
            return
        self._calls.put((fn, args))
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\0")

    def in_loop_thread(self) -> bool:
        return self._thread == threading.get_ident()

    # -- the loop's thread -----------------------------------------------------------------------
    def bind(self) -> None:
        """Make the calling thread the loop's (before anything registers from it)."""
        self._thread = threading.get_ident()

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (or at EOF/error)."""
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def set_writer(self, fd: int, callback: Callback | None) -> None:
        """Call ``callback()`` while ``fd`` is writable; None stops asking."""
        if callback is None:
            if self._writers.pop(fd, None) is not None:
                self._update(fd)
        else:
            self._writers[fd] = callback
            self._update(fd)

    def run_once(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` s (None: until something happens) for ready descriptors or
        calls from other threads, then run their callbacks."""
        if self._thread is None:
            self.bind()
        try:
            ready = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:  # a signal handler ran; its call, if any, is queued
            ready = []
        for fd, events in ready:
            if fd == self._wake_r:
                self._woken = False  # before draining: a later call writes again
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(fd, 4096)
                continue
            if events & _WRITE and fd in self._writers:
                self._writers[fd]()
            if events & _READ and fd in self._readers:
                self._readers[fd]()
        if self._calls.empty():
            return
        while True:
            try:
                fn, args = self._calls.get_nowait()
            except Empty:
                return
            fn(*args)

    def close(self) -> None:
        self.closed = True
        self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _update(self, fd: int) -> None:
        mask = ((select.EPOLLIN if fd in self._readers else 0)
                | (select.EPOLLOUT if fd in self._writers else 0))
        registered = self._masks.get(fd)
        if not mask:
            if registered is not None:
                del self._masks[fd]
                with contextlib.suppress(OSError):  # already closed: epoll forgot it itself
                    self._epoll.unregister(fd)
        elif registered is None:
            self._epoll.register(fd, mask)
            self._masks[fd] = mask
        elif registered != mask:
            try:
                self._epoll.modify(fd, mask)
            except FileNotFoundError:  # closed and reopened under the same number meanwhile
                self._epoll.register(fd, mask)
            self._masks[fd] = mask
