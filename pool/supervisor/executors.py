"""The pool's executors as the arbiter sees them: a slot per process, and its reader thread.

A slot's ``state`` is the arbiter's truth about what that executor may be given:

``booting``   spawned, no ``ready`` yet (a boot deadline runs)
``idle``      ready, nobody's; admission counts it as free
``reserved``  promised to a claimed run that is still fetching (from the claim reply on)
``busy``      running a dispatched run, until its next ``ready``
``stopping``  asked to stop; not to be given work
``dead``      its process is gone (reaped); the slot is dropped

The reader thread only turns the executor's frames into items on the arbiter's inbox; it
decides nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pool.executor.handle import ExecutorGone, ExecutorHandle
from pool.executor.protocol import ProtocolError

log = logging.getLogger(__name__)

BOOTING, IDLE, RESERVED, BUSY, STOPPING, DEAD = (
    "booting", "idle", "reserved", "busy", "stopping", "dead")

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
    runs_done: int = 0
    started_at: float = field(default_factory=time.time)
    ready: dict[str, Any] = field(default_factory=dict)
    boot_failure: str | None = None

    @property
    def pid(self) -> int:
        return self.handle.pid


def spawn_slot(slot_id: int, init: dict[str, Any], boot_timeout: float, post: Post) -> ExecutorSlot:
    """Start an executor (from the calling thread: call it from the long-lived main thread, so
    ``PR_SET_PDEATHSIG`` stays armed) and a daemon thread reading its messages into ``post``."""
    executor_log = logging.getLogger("pool.executor")

    def on_output(line: str) -> None:
        executor_log.info("[executor %s] %s", slot_id, line)

    handle = ExecutorHandle.spawn(init, on_output=on_output)
    slot = ExecutorSlot(slot_id, handle, time.monotonic() + boot_timeout)
    threading.Thread(target=read_messages, args=(slot_id, handle, post),
                     name=f"executor-{handle.pid}-reader", daemon=True).start()
    return slot


def read_messages(slot_id: int, handle: ExecutorHandle, post: Post) -> None:
    """Forward every message, then one ``executor_gone`` when the socket closes."""
    try:
        while True:
            message = handle.recv()
            if message is not None:
                post(("executor_message", slot_id, message))
    except ExecutorGone as gone:
        post(("executor_gone", slot_id, gone.returncode, gone.reason))
    except ProtocolError as exc:
        handle.kill()
        post(("executor_gone", slot_id, handle.proc.returncode,
              f"executor broke the protocol: {exc}"))
