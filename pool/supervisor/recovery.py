"""Recovery on start: report the runs a killed supervisor left behind, within seconds.

The journal (journal.py) says how far each run of the previous incarnation got; what to do
with it follows from what Lightning does with a run nobody reports (reference §5.2, and
docs/design/journal.md for the reasoning):

* **claimed, never joined** — Lightning rolls it back to ``available`` after the join timeout
  and may already have handed it to another worker: leave it alone (logged).
* **joined, never dispatched** — Lightning keeps a joined run for the worker that joined it, and
  no executor ever had it (the ``dispatched`` record is written before the hand-over, and the
  page cache kept it: the journal is from this boot), so executing it now is its first and only
  execution: rejoin and run it like a fresh claim.
* **dispatched** (or joined in another boot's journal, where "never dispatched" cannot be
  proven) — its code may have run: rejoin ``run:<id>`` with its token, close every step still
  open (``step:complete``, ``crash``), then ``run:complete`` with ``crash`` and
  ``RESTART_ERROR_TYPE``.

Recovery starts before the first claim and does not wait for executors: the socket connects
at once and the rejoins go out first. Reports hold no executor and no workloop slot, so new
work is never held up by them: a report's rejoin Lightning does not answer within the message
timeout is logged once and retried by the channel until the token expires, while claims go on
(a run to execute holds an executor, so its rejoin gives up after one timeout, like a claim's
join). A
refused rejoin (an expired token, a run already final) is logged once with the run id. Each
recovered run is counted by outcome (``poolctl_recovered_runs``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pool.lightning.payloads import Event, closing_events, now_us
from pool.lightning.phoenix import Reply
from pool.supervisor.journal import JournaledRun, Replay

if TYPE_CHECKING:
    from pool.supervisor.arbiter import Arbiter
    from pool.supervisor.session import RunSession

log = logging.getLogger("pool.supervisor.recovery")

# Why WorkerRestartError (docs/design/journal.md): the reason is ``crash`` (Lightning shows
# "crashed"), but nothing in the job crashed — ``CompileError``/``RuntimeCrash`` would blame
# the job's code and ``ExitError`` the job's own process; ``LostAfterStart`` is Lightning's
# word for a run nobody reported, which this one no longer is. Named like every run error
# type (``*Error``), it tells an operator filtering runs that the worker itself died.
RESTART_ERROR_TYPE = "WorkerRestartError"
RESTART_MESSAGE = ("The worker restarted while this run was in progress (its supervisor "
                   "process died: killed, out of memory, or its container or host restarted); "
                   "the run was interrupted and was not resumed")
UNPROVEN_MESSAGE = ("The worker restarted before this run started, after a host restart: "
                    "the worker cannot prove the run never began, so it was not executed")


def restart_events(run_id: str, open_steps: dict[str, str], message: str) -> list[Event]:
    """What a restarted worker says about a run it can only report: each open step closed as
    crashed, then the run (no step output: the previous incarnation's state is gone)."""
    return closing_events(run_id, open_steps, "crash", RESTART_ERROR_TYPE, message, now_us())


def report_message(run: JournaledRun) -> str:
    return UNPROVEN_MESSAGE if run.unproven else RESTART_MESSAGE


def recover_runs(arbiter: Arbiter, replay: Replay) -> None:
    """Act on every run the journal holds (called once, before executors are spawned)."""
    if replay.torn:
        arbiter.count("journal_torn")  # the warning with how many was logged at the replay
    if not replay.runs:
        return
    log.warning("journal: %d run(s) left by the previous supervisor; recovering them now",
                len(replay.runs))
    arbiter.socket.connect()  # at once: recovery does not wait for executors to boot
    for run in list(replay.runs.values()):
        if not run.joined:
            log.warning("run %s was claimed but never joined before the restart: left to "
                        "Lightning, which hands it out again after its join timeout",
                        run.id, extra={"run_id": run.id})
            arbiter.journal.done(run.id)
            arbiter.count("run_recovered", outcome="left")
        elif run.dispatched:
            log.warning("run %s was in progress when the supervisor died: reporting it as "
                        "crashed (%s)", run.id, RESTART_ERROR_TYPE, extra={"run_id": run.id})
            arbiter.rejoin_run(run)
        else:
            log.warning("run %s was joined but never reached an executor: executing it now "
                        "(its first execution)", run.id, extra={"run_id": run.id})
            arbiter.rejoin_run(run)


def rejoin_unanswered(run: JournaledRun) -> None:
    """No answer to a recovered run's rejoin within the message timeout: Lightning is slow or
    away. The channel rejoins by itself until the token's expiry; nothing waits for it."""
    run.rejoin_timeouts += 1
    if run.rejoin_timeouts == 1:
        log.warning("run %s: no answer to its rejoin within the message timeout; still "
                    "trying until its token expires (new work is not held up)", run.id,
                    extra={"run_id": run.id})


def rejoin_refused(session: RunSession, reply: Reply) -> None:
    """A recovered run's rejoin was refused: say why, once, with the run id; count it."""
    run = session.recovered
    assert run is not None
    expired = run.exp is not None and run.exp <= time.time()
    why = _describe(reply)
    if expired:
        log.error("run %s: its run token expired at %s, so Lightning refused the rejoin (%s); "
                  "it cannot be reported and Lightning's janitor will mark it lost", run.id,
                  time.strftime("%H:%M:%SZ", time.gmtime(run.exp or 0)), why,
                  extra={"run_id": run.id})
    else:
        log.error("run %s: Lightning refused the rejoin after the restart (%s): it was "
                  "probably reported already, or is no longer this worker's", run.id, why,
                  extra={"run_id": run.id})
    session.count("run_recovered", outcome="expired" if expired else "refused")


def _describe(reply: Reply) -> str:
    response: Any = reply.response
    if isinstance(response, dict) and "reason" in response:
        return str(response["reason"])
    return reply.status if response is None else str(response)
