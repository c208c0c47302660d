"""How much to claim, and when: the workloops' accounting (reference §5.4, DESIGN "Admit").

Over-claiming is the classic way to lose runs (supervisors.md §0.2): a claimed run that no
executor can start at once sits unjoined or queued until Lightning gives up on it. So a claim
asks for no more than

* the ready executors nobody has reserved, minus the demand of every claim still in flight
  (shared by all workloops), and
* the workloop's own slots, minus its active runs and its in-flight demand.

Between empty claims a workloop backs off (×1.15 up to the max); a claim that brought runs, a
finished run of its own, ``work-available`` or a (re)joined queue makes it claim at once.

A claim that brought runs is followed at once by the next one while the workloop has room (a
deliberate improvement on ws-worker, which pauses its minimum backoff after every claim):
against a Lightning that hands out one run per claim, as OpenFn's own mock does, the pool
otherwise started one run per backoff and never ran more than one at once. Only an empty
claim (or an error or timeout) backs off. These follow-up claims are counted apart
(``claim_after_runs``), so what they add is visible in ``/metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pool.lightning.workloops import Backoff, Workloop

GROWTH = 1.15


@dataclass
class WorkloopState:
    """One workloop's counters, owned by the arbiter loop."""

    loop: Workloop
    delay: float
    active: int = 0  # runs claimed by this loop and not yet finished
    claiming: int = 0  # demand of this loop's claim in flight (0 = none)
    next_claim_at: float = 0.0  # monotonic; no claim before this
    follow_up: bool = False  # the last claim brought runs: the next one goes at once

    @property
    def room(self) -> int:
        return self.loop.capacity - self.active - self.claiming


class Admission:
    """Per-workloop slots, in-flight claims and backoff; pure bookkeeping, no I/O."""

    def __init__(self, workloops: tuple[Workloop, ...] | list[Workloop], backoff: Backoff) -> None:
        self.backoff = backoff
        self.loops = [WorkloopState(loop, backoff.min_s) for loop in workloops]

    @property
    def claims_in_flight(self) -> int:
        """Total demand of the claims sent and not yet answered."""
        return sum(state.claiming for state in self.loops)

    @property
    def active_runs(self) -> int:
        return sum(state.active for state in self.loops)

    def plan_claims(self, free_executors: int, now: float) -> list[tuple[int, int, bool]]:
        """``(workloop index, demand, follow_up)`` for each claim to send now, already counted
        as sent; ``follow_up`` when it goes at once after a claim that brought runs.

        ``free_executors`` is the ready executors that are not reserved; the demand of claims
        already in flight is taken off it here.
        """
        free = free_executors - self.claims_in_flight
        claims = []
        for index, state in enumerate(self.loops):
            if free <= 0:
                break
            if state.claiming or now < state.next_claim_at:
                continue
            demand = min(state.room, free)
            if demand <= 0:
                continue  # halted until one of its runs finishes
            state.claiming = demand
            free -= demand
            claims.append((index, demand, state.follow_up))
            state.follow_up = False
        return claims

    def claim_answered(self, index: int, runs: int, now: float) -> None:
        """A claim came back with ``runs`` runs (0 for empty, an error or a timeout)."""
        state = self.loops[index]
        state.claiming = 0
        state.active += runs
        state.follow_up = runs > 0
        if runs:
            state.delay = self.backoff.min_s
            state.next_claim_at = now  # again at once while there is room: see the docstring
        else:
            state.next_claim_at = now + state.delay
            state.delay = min(self.backoff.max_s, state.delay * GROWTH)

    def run_finished(self, index: int, now: float) -> None:
        """A run of this workloop ended: it claims again at once, with a fresh backoff."""
        state = self.loops[index]
        state.active = max(0, state.active - 1)
        self.wake(index, now)

    def wake(self, index: int, now: float, reset: bool = True) -> None:
        state = self.loops[index]
        if reset:
            state.delay = self.backoff.min_s
        state.next_claim_at = now
        state.follow_up = False

    def wake_all(self, now: float, reset: bool = True) -> None:
        """Every workloop may claim now: a (re)joined queue resets their backoff,
        ``work-available`` does not (as in ws-worker)."""
        for index in range(len(self.loops)):
            self.wake(index, now, reset)

    def next_claim_due(self, free_executors: int) -> float | None:
        """When the earliest backing-off workloop with room may claim (for the loop's sleep).

        None while no claim could go out anyway (no ready executor nobody has reserved or
        asked for): a claim made possible by a finished run is not due until its executor
        reports ``ready`` again, and that message wakes the loop itself — without this the
        loop would spin through a strict executor's whole standby boot.
        """
        if free_executors - self.claims_in_flight <= 0:
            return None
        due = [s.next_claim_at for s in self.loops if not s.claiming and s.room > 0]
        return min(due, default=None)
