"""The pool's executors as the arbiter sees them: a slot per process, and how it is read.

A slot's ``state`` is the arbiter's truth about what that executor may be given:

``booting``   spawned, no ``ready`` yet (a boot deadline runs)
``idle``      ready, nobody's; admission counts it as free
``reserved``  promised to a claimed run that is still fetching (from the claim reply on)
``busy``      running a dispatched run, until its next ``ready``; once that run's
              ``run-complete`` has come (``run_over``), the published view calls it
              ``warming`` with no run: the run is over, the executor is getting its next shim
              ready (strict mode boots a fresh one, ~0.6 s) and cannot be given work yet
``stopping``  asked to stop; not to be given work
``dead``      its process is gone (reaped); the slot is dropped

Each executor's socket is read by the arbiter's own event loop (no thread per executor: a
thread hop per message was a share of the supervisor's CPU per run); the reader only turns
frames into items for the arbiter and decides nothing. At EOF a short-lived thread reaps the
process (which may take a moment) and reports ``executor_gone``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pool.eventloop import EventLoop
from pool.executor.handle import ExecutorHandle
from pool.executor.protocol import ProtocolError

log = logging.getLogger(__name__)

BOOTING, IDLE, RESERVED, BUSY, STOPPING, DEAD = (
    "booting", "idle", "reserved", "busy", "stopping", "dead")
WARMING = "warming"  # a view of ``busy`` with ``run_over``, never a slot's state

Post = Callable[[tuple[Any, ...]], None]


@dataclass
class ExecutorSlot:
    """One executor process and what the arbiter knows about it."""

    id: int
    handle: ExecutorHandle
    boot_deadline: float
    state: str = BOOTING
    run_id: str | None = None  # the run it is reserved for or running
    run_dispatched: bool = False  # the run message was sent; a death is that run's crash
    run_over: bool = False  # busy, but its run's run-complete came: waiting for ``ready``
    runs_done: int = 0
    started_at: float = field(default_factory=time.time)
    ready: dict[str, Any] = field(default_factory=dict)
    boot_failure: str | None = None
    fd: int = -1  # the socket's descriptor as registered with the loop (unregister before close)
    uid_index: int | None = None  # uid sandbox: which two uids of the range this slot's shims use

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def shown(self) -> tuple[str, str | None]:
        """State and run as status, /metrics and /readyz show them: a finished run is not
        shown as running while the executor readies its next shim."""
        if self.state == BUSY and self.run_over:
            return WARMING, None
        return self.state, self.run_id


def spawn_slot(slot_id: int, init: dict[str, Any], boot_timeout: float, loop: EventLoop,
               post: Post) -> ExecutorSlot:
    """Start an executor (from the calling thread: call it from the long-lived main thread, so
    ``PR_SET_PDEATHSIG`` stays armed) and have ``loop`` read its messages into ``post``."""
    executor_log = logging.getLogger("pool.executor")

    def on_output(line: str) -> None:
        executor_log.info("[executor %s] %s", slot_id, line)

    handle = ExecutorHandle.spawn(init, on_output=on_output)
    slot = ExecutorSlot(slot_id, handle, time.monotonic() + boot_timeout, fd=handle.fileno())
    loop.add_reader(slot.fd, lambda: read_messages(slot, loop, post))
    return slot


def read_messages(slot: ExecutorSlot, loop: EventLoop, post: Post) -> None:
    """The socket is readable: post every whole message; at EOF stop reading and have a thread
    report ``executor_gone`` once the process is reaped."""
    handle = slot.handle
    try:
        messages = handle.read_available()
    except ProtocolError as exc:
        loop.remove_reader(slot.fd)
        handle.kill()
        post(("executor_gone", slot.id, handle.proc.returncode,
              f"executor broke the protocol: {exc}"))
        return
    if messages is None:
        loop.remove_reader(slot.fd)
        threading.Thread(target=report_gone, args=(slot.id, handle, post),
                         name=f"executor-{handle.pid}-gone", daemon=True).start()
        return
    for message in messages:
        post(("executor_message", slot.id, message))


def report_gone(slot_id: int, handle: ExecutorHandle, post: Post) -> None:
    gone = handle.gone()
    post(("executor_gone", slot_id, gone.returncode, gone.reason))
