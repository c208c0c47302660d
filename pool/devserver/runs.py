"""The dev server's database: runs, their queue, their records, credentials and dataclips.

One ``RunBook`` is shared by the server's event loop, the HTTP API thread and the test's own
thread, so every access goes through ``book.lock`` (a Condition: ``wait_for_run`` sleeps on it
and every final state wakes it). Nothing here awaits or does I/O while holding it.
"""

from __future__ import annotations

import copy
import heapq
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pool.devserver.plans import InvalidPlan, normalize_plan, validate_queue

# Lightning's run states after run:complete, by reason (reference §6.2).
FINAL_STATE_BY_REASON = {"success": "success", "fail": "failed", "crash": "crashed",
                         "kill": "killed", "exception": "exception"}
FINAL_STATES = frozenset(FINAL_STATE_BY_REASON.values()) | {"lost"}
# the janitor's error types by the state a lost run was left in (Lightning's Janitor)
LOST_ERROR_TYPES = {"claimed": "LostAfterClaim", "started": "LostAfterStart"}


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Run:
    """One run as Lightning keeps it, plus everything the worker said about it."""

    id: str
    seq: int
    plan: dict
    queue: str
    state: str = "available"
    reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    final_state: Any = None
    final_dataclip_id: str | None = None
    worker_name: str | None = None
    times: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(
        ("enqueued", "claimed", "started", "completed")))
    events: list[dict] = field(default_factory=list)
    steps: dict[str, dict] = field(default_factory=dict)
    dataclip_ids: list[str] = field(default_factory=list)
    joined: bool = False
    claim_generation: int = 0

    @property
    def job_ids(self) -> set[str]:
        return {job["id"] for job in self.plan["jobs"]}

    @property
    def saves_dataclips(self) -> bool:
        return (self.plan.get("options") or {}).get("output_dataclips", True) is not False

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


class RunBook:
    """Runs in enqueue order, the available ones claimable by queue preference.

    Every run ever stored stays in ``runs``; a claim looks only at ``_available``, a heap per
    queue of the runs available in it (oldest first), so it costs the same after 10,000 runs
    as after ten.
    """

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.runs: dict[str, Run] = {}
        self.credentials: dict[str, Any] = {}
        self.dataclips: dict[str, Any] = {}
        self._seq = 0
        self._available: dict[str, list[tuple[int, Run]]] = {}  # queue -> heap of (seq, run)
        self._in_progress: dict[str, Run] = {}  # claimed or started: what the janitor checks

    def enqueue(self, plan: object, credentials: Mapping[str, Any] | None,
                dataclips: Mapping[str, Any] | None, queue: str) -> Run:
        """Check and store a plan as a new available run; raise ``InvalidPlan`` if it is bad."""
        for name, value in (("credentials", credentials), ("dataclips", dataclips)):
            if value is not None and not isinstance(value, Mapping):
                raise InvalidPlan(f"{name} must be an object of id -> body")
        validate_queue(queue)
        with self.lock:
            known_credentials = {**self.credentials, **(credentials or {})}
            known_dataclips = {**self.dataclips, **(dataclips or {})}
            plan = normalize_plan(plan, known_credentials, known_dataclips)
            self.credentials = known_credentials
            self.dataclips = known_dataclips
            run_id = str(uuid.uuid4())
            plan["id"] = run_id
            self._seq += 1
            run = Run(id=run_id, seq=self._seq, plan=plan, queue=queue)
            run.times["enqueued"] = now_us()
            if plan.get("dataclip_id"):
                run.dataclip_ids.append(plan["dataclip_id"])
            self.runs[run_id] = run
            self._make_available(run)
            return run

    def _make_available(self, run: Run) -> None:
        heapq.heappush(self._available.setdefault(run.queue, []), (run.seq, run))

    def _oldest_available(self, queue: str) -> Run | None:
        """The oldest available run in ``queue`` (``*``: in any queue), left in place."""
        heads = self._available.items() if queue == "*" else [
            (queue, self._available.get(queue, []))]
        oldest: Run | None = None
        for _, heap in heads:
            if heap and (oldest is None or heap[0][0] < oldest.seq):
                oldest = heap[0][1]
        return oldest

    def claim(self, demand: int, queues: list[str], worker_name: str | None) -> list[Run]:
        """Take up to ``demand`` available runs, by the order of ``queues`` (``*`` = any)."""
        picked: list[Run] = []
        with self.lock:
            for queue in queues:
                while len(picked) < demand and (run := self._oldest_available(queue)) is not None:
                    heapq.heappop(self._available[run.queue])
                    picked.append(run)
            for run in picked:
                run.state = "claimed"
                run.joined = False
                run.claim_generation += 1
                run.worker_name = worker_name
                run.times["claimed"] = now_us()
                self._in_progress[run.id] = run
        return picked

    def roll_back(self, run: Run, generation: int | None = None) -> bool:
        """Return a claimed, never-joined run to ``available`` (Lightning's safety nets).

        ``generation`` guards a delayed roll-back against a run claimed again since.
        """
        with self.lock:
            if run.state != "claimed" or run.joined:
                return False
            if generation is not None and generation != run.claim_generation:
                return False
            run.state = "available"
            run.worker_name = None
            run.times["claimed"] = None
            self._in_progress.pop(run.id, None)
            self._make_available(run)
            return True

    def sweep_lost(self, lost_after_s: Callable[[Run], float]) -> list[Run]:
        """Lightning's janitor: every run claimed longer ago than its timeout plus the grace
        period and still not final becomes ``lost`` (``LostAfterClaim`` / ``LostAfterStart``
        by the state it was left in); its open steps are lost with it."""
        now = now_us()
        lost = []
        with self.lock:
            for run in list(self._in_progress.values()):
                claimed = run.times["claimed"]
                if run.is_final or claimed is None:
                    self._in_progress.pop(run.id, None)
                    continue
                if claimed + lost_after_s(run) * 1_000_000 > now:
                    continue
                run.error_type = LOST_ERROR_TYPES.get(run.state, "UnknownReason")
                run.state, run.reason = "lost", "lost"
                for step in run.steps.values():
                    if step["reason"] is None:
                        step.update(reason="lost", completed=now)
                self._in_progress.pop(run.id, None)
                run.times["completed"] = now
                lost.append(run)
            if lost:
                self.lock.notify_all()
        return lost

    def finish(self, run: Run) -> None:
        """Wake whoever waits for this run (call with the new final state already set)."""
        with self.lock:
            self._in_progress.pop(run.id, None)
            run.times["completed"] = now_us()
            self.lock.notify_all()

    def get(self, run_id: str) -> Run | None:
        with self.lock:
            return self.runs.get(run_id)

    def snapshot(self, run: Run) -> dict:
        """A deep, JSON-ready copy of a run's record, safe to hand to another thread."""
        with self.lock:
            return copy.deepcopy({
                "id": run.id, "state": run.state, "reason": run.reason,
                "error_type": run.error_type, "error_message": run.error_message,
                "final_state": run.final_state, "final_dataclip_id": run.final_dataclip_id,
                "times": run.times, "events": run.events, "steps": run.steps,
                "dataclips": {i: self.dataclips.get(i) for i in run.dataclip_ids},
                "queue": run.queue, "worker_name": run.worker_name, "plan": run.plan,
            })

    def wait_final(self, run_id: str, timeout: float) -> Run:
        """Block until the run reaches a final state; ``TimeoutError`` says where it got to."""
        deadline = time.monotonic() + timeout
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                raise KeyError(f"no run {run_id!r}")
            while not run.is_final:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"run {run_id} still {run.state} after {timeout}s "
                                       f"({len(run.events)} events received)")
                self.lock.wait(left)
            return run
