"""A stand-in arbiter for the observer tests: publishes a snapshot, runs commands on a thread.

It follows the ``PoolHandle`` contract the real arbiter implements (commands are queued and
run by one loop thread that resolves each future), so the control socket and HTTP server are
exercised exactly as they will be used; only the pool behind them is small.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from pool.supervisor.snapshot import PoolSnapshot


class StubPool:
    """Answers ``scale``/``drain``/``stop`` by updating its snapshot on its own loop thread."""

    def __init__(self, snapshot: PoolSnapshot) -> None:
        self.current = snapshot
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self._inbox: queue.SimpleQueue[tuple[str, dict[str, Any], Future[Any]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def snapshot(self) -> PoolSnapshot:
        return self.current

    def submit(self, name: str, **args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._inbox.put((name, args, future))
        return future

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while (item := self._inbox.get()) is not None:
            name, args, future = item
            self.commands.append((name, args))
            try:
                future.set_result(getattr(self, f"_do_{name}")(**args))
            except Exception as exc:
                future.set_exception(exc)

    def _do_scale(self, size: int) -> str:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        old, self.current = self.current.size, replace(self.current, size=size)
        return f"size {size} (was {old})"

    def _do_drain(self) -> str:
        self.current = replace(self.current, draining=True)
        return "draining"

    def _do_stop(self, graceful: bool) -> str:
        self.current = replace(self.current, draining=True)
        return "stopping" if graceful else "stopping now"
