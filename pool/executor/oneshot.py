"""One run through a real executor process, for ``poolctl execute`` (and anything else local).

``poolctl execute`` must take the same code path as a Lightning run (DESIGN.md: "a run's reason
is computed once, in the executor"), so it starts an executor exactly as the supervisor does —
fresh interpreter, scrubbed environment, ``init`` from the settings table, any isolation mode —
sends one ``run``, hands every event to ``on_event`` and returns the ``run-complete``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from pool.executor import protocol
from pool.executor.config import init_message
from pool.executor.handle import ExecutorBootError, ExecutorGone, ExecutorHandle

BOOT_TIMEOUT = 120.0


def execute_once(plan: dict[str, Any], input_state: Any, settings: Any,
                 on_event: Callable[[dict[str, Any]], None] = lambda _: None,
                 run_id: str | None = None,
                 sandbox: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``plan`` on a fresh executor; the ``run-complete`` message (always one).

    Raises ExecutorBootError (one-line reason) when the executor cannot boot. If the executor
    dies mid-run, the result is ``crash`` with the reason, as the supervisor would report it.
    """
    run_id = run_id or str(uuid.uuid4())
    # one run: pre-warming only delays it, and preparing would outlive the executor
    init = init_message(settings, prewarm=[], prepare=False)
    if sandbox is not None:  # checked by the caller (pool.executor.sandbox.choose)
        init["sandbox"] = sandbox
    handle = ExecutorHandle.spawn(init)
    try:
        handle.wait_ready(getattr(settings, "boot_timeout", None) or BOOT_TIMEOUT)
        handle.run(run_id, {"id": run_id, **plan}, input_state)
        while True:
            try:
                message = handle.recv(None)
            except ExecutorGone as gone:
                return {"type": protocol.RUN_COMPLETE, "run_id": run_id, "reason": "crash",
                        "error_type": "ExitError", "error_message": gone.reason,
                        "final_state": None}
            assert message is not None
            if message.get("run_id") == run_id:
                on_event(message)
                if message["type"] == protocol.RUN_COMPLETE:
                    return message
    finally:
        handle.close()


__all__ = ["ExecutorBootError", "execute_once"]
