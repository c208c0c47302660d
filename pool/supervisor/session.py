"""One claimed run, from its channel join to its ``run:complete`` (DESIGN "One run, end to end").

States, advanced only by the arbiter loop::

    joining ─ok→ fetching ─plan, dataclip, credentials→ ready ─dispatched→ running
       │              └─any fetch failed→ reporting (run:complete exception, no run:start)
       └─refused→ refused (no channel to report on: Lightning re-queues the run)
    running ─executor's run-complete (or its death, reported as crash)→ reporting ─→ done

A rejoin after a socket drop never moves the state back: the run is never fetched or
executed twice, its kept events are simply delivered. The session does no process work: the
arbiter reads its state after every call and dispatches, releases or completes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pool.lightning.payloads import (
    RUN_COMPLETE,
    Event,
    RunEvents,
    credential_error_message,
    dataclip_error_message,
    ending_events,
    error_complete,
    now_us,
)
from pool.lightning.phoenix import LightningError, PhoenixSocket, Push, Reply
from pool.lightning.plan import ConvertedPlan, PlanError, attach_credentials, convert_plan
from pool.lightning.run_channel import RunChannel
from pool.supervisor.config import RUN_GRACE_S, SupervisorConfig
from pool.supervisor.journal import Journal, JournaledRun
from pool.supervisor.outbox import LINE, LOG, Outbox
from pool.supervisor.recovery import (
    rejoin_refused,
    rejoin_unanswered,
    report_message,
    restart_events,
)
from pool.supervisor.timers import Timers

log = logging.getLogger(__name__)

JOINING, FETCHING, READY, RUNNING, REPORTING, DONE, REFUSED = (
    "joining", "fetching", "ready", "running", "reporting", "done", "refused")

Post = Callable[[tuple[Any, ...]], None]


class RunSession:
    """A run's channel, fetches, event bookkeeping and outbox."""

    def __init__(self, run_id: str, token: str, workloop: int, sock: PhoenixSocket,
                 config: SupervisorConfig, timers: Timers, post: Post,
                 count: Callable[..., None], token_expires_at: float | None) -> None:
        self.run_id = run_id
        self.token = token
        self.workloop = workloop
        self.config = config
        self.post = post
        self.count = count
        self.state = JOINING
        # the journal of claimed runs, and the journaled run this session recovers (if any):
        # set by the arbiter (recovery.py)
        self.journal: Journal | None = None
        self.recovered: JournaledRun | None = None
        # decided once, at recovery: its code may have run, so it is only reported (and holds
        # no executor and no workloop slot)
        self.report_only = False
        self.slot_id: int | None = None
        self.claimed_at = time.monotonic()
        # when kept events are given up if still undelivered: the token's expiry when known
        self.deadline = token_expires_at if token_expires_at is not None else (
            self.claimed_at + config.defaults.timeout_ms / 1000 + RUN_GRACE_S)
        self.reason: str | None = None  # the reason reported in run:complete
        self.executor_done = False
        self.converted: ConvertedPlan | None = None
        self.input: Any = {}
        self.events: RunEvents | None = None
        self._credentials: dict[str, Any] = {}
        self._fetch_failures: dict[str, LightningError] = {}
        self._dataclip_failure: LightningError | None = None
        self._fetching: set[str] = set()
        self.channel = RunChannel(sock, run_id, token, timeout=config.message_timeout,
                                  on_join=self._joined)
        self.outbox = Outbox(run_id, self._send_event, timers, count,
                             batch_logs=config.batch_logs,
                             batch_interval_s=config.batch_interval_s,
                             batch_limit=config.batch_limit, cap_bytes=config.outbox_cap_bytes,
                             on_withhold=self._withhold, on_finished=self._finished,
                             frame_limit=config.frame_limit_bytes, fit=self._fit_event,
                             end=self._end_early)

    # -- channel ------------------------------------------------------------------------------
    def join(self) -> None:
        self.channel.join()

    def _joined(self, reply: Reply, rejoined: bool) -> None:  # socket thread: enqueue only
        self.post(("run_joined", self.run_id, reply, rejoined))

    def on_joined(self, reply: Reply) -> None:
        """Every join outcome, the first and each rejoin after a drop."""
        if self.state == JOINING:
            if not reply.ok:
                if self.report_only and reply.status == "timeout":
                    rejoin_unanswered(self.recovered)  # the channel rejoins by itself
                    return
                if self.recovered is not None:
                    rejoin_refused(self, reply)
                else:
                    log.error("run %s: Lightning refused to join run:%s (%s); it will re-queue "
                              "the run", self.run_id, self.run_id, _describe(reply))
                self.state = REFUSED
                return
            self.outbox.channel_up = True
            if self.journal is not None:
                self.journal.joined(self.run_id)
            if self.report_only:
                self.report_restart(self.recovered)
                return
            if self.recovered is not None:  # never dispatched: executed now, for the first time
                self.count("run_recovered", outcome="executed")
            self.fetch_plan()
        elif reply.ok:
            self.outbox.resume()
        elif reply.status == "error" and self.state == REPORTING:
            # the channel is no longer ours (the run is final there, its run:complete landed
            # before the drop, or the token expired): nothing left can be delivered
            lost = self.outbox.abandon("refused")
            log.warning("run %s: Lightning refused the rejoin (%s) with %d event(s) still to "
                        "deliver; given up", self.run_id, _describe(reply), lost)
            self.state = DONE

    def on_socket_closed(self) -> None:
        self.outbox.pause()

    def leave(self) -> None:
        self.channel.leave()

    # -- fetching -----------------------------------------------------------------------------
    def fetch_plan(self) -> None:
        self.state = FETCHING
        self._fetch("plan", self.channel.fetch_plan)

    def _fetch(self, what: str, start: Callable[..., Push], *args: Any) -> None:
        self._fetching.add(what)
        start(*args, callback=lambda push: self.post(("run_fetched", self.run_id, what, push)))

    def on_fetched(self, what: str, push: Push) -> None:
        self._fetching.discard(what)
        if self.state != FETCHING:
            return
        if what == "plan":
            self._plan_fetched(push)
        elif what == "dataclip":
            try:
                self.input = push.result(0)
            except LightningError as exc:
                self._dataclip_failure = exc
        else:
            credential_id = what.partition(":")[2]
            try:
                self._credentials[credential_id] = push.result(0)
            except LightningError as exc:
                self._fetch_failures[credential_id] = exc
        if not self._fetching and self.state == FETCHING:
            self._fetches_settled()

    def _plan_fetched(self, push: Push) -> None:
        try:
            plan = push.result(0)
            self.converted = convert_plan(plan, self.config.defaults, run_id=self.run_id,
                                          run_token=self.token,
                                          collections=self.config.collections)
        except (LightningError, PlanError) as exc:
            self.fail_before_start("exception", "ExecutionError", f"Invalid plan: {exc}")
            return
        converted = self.converted
        if converted.dataclip_id:
            self._fetch("dataclip", self.channel.fetch_dataclip, converted.dataclip_id)
        for credential_id in converted.credential_ids:
            self._fetch(f"credential:{credential_id}", self.channel.fetch_credential,
                        credential_id)

    def _fetches_settled(self) -> None:
        converted = self.converted
        assert converted is not None
        if self._dataclip_failure is not None:
            self.fail_before_start("exception", "DataClipError", dataclip_error_message(
                converted.dataclip_id or "", self._dataclip_failure))
        elif self._fetch_failures:
            self.fail_before_start("exception", "CredentialLoadError",
                                   credential_error_message(dict(self._fetch_failures)))
        else:
            attach_credentials(converted.plan, self._credentials)
            self._credentials.clear()  # secrets live no longer than needed
            scope_collections(converted.plan)
            self.state = READY

    def fail_before_start(self, reason: str, error_type: str, message: str) -> None:
        """The run cannot start: ``run:complete`` alone, no ``run:start`` (as ws-worker)."""
        log.error("run %s: %s: %s", self.run_id, error_type, message)
        self.reason = reason
        self.state = REPORTING
        self.executor_done = True
        self.outbox.add([(RUN_COMPLETE, error_complete(reason, error_type, message))])

    def report_restart(self, run: JournaledRun | None) -> None:
        """A run the previous incarnation had in progress: close its open steps and complete
        it as crashed (recovery.py); it is never executed again."""
        assert run is not None
        self.reason = "crash"
        self.state = REPORTING
        self.executor_done = True
        self.outbox.add(restart_events(self.run_id, dict(run.open_steps), report_message(run)),
                        LINE)

    # -- running ------------------------------------------------------------------------------
    def dispatched(self, slot_id: int) -> None:
        """The executor gets the run now: start its events with the worker's preamble lines.
        Journaled first: from here on the run's code may have run."""
        converted = self.converted
        assert converted is not None
        if self.journal is not None:
            self.journal.dispatched(self.run_id)
        self.state = RUNNING
        timeout_s = converted.limits["timeout_ms"] / 1000
        self.deadline = max(self.deadline, time.monotonic() + timeout_s + RUN_GRACE_S)
        self.events = RunEvents(self.run_id, converted.limits, converted.output_dataclips,
                                converted.dataclip_id, thread_id=slot_id)
        self.outbox.add(self.events.preamble(), LOG)

    def on_executor_message(self, message: dict[str, Any]) -> None:
        if self.events is None or self.executor_done:
            return
        kind = message.get("type")
        try:
            events = self.events.on_message(message)
        except (KeyError, ValueError, TypeError) as exc:
            log.error("run %s: unreadable %s message from its executor ignored: %s",
                      self.run_id, kind, exc)
            return
        if kind == "step-start" and self.journal is not None:
            self.journal.step_opened(self.run_id, str(message["step_id"]),
                                     str(message["job_id"]))
        elif kind == "run-complete":
            self.executor_done = True
            self.reason = message.get("reason") or "crash"
            self.state = REPORTING
        # engine log lines may share a batch; lines the worker adds itself go alone
        self.outbox.add(events, LOG if kind == "log" else LINE)

    def executor_died(self, why: str) -> None:
        """Its executor is gone mid-run: report the run as crashed (closing any open step)."""
        if self.executor_done or self.events is None:
            return
        log.error("run %s: its executor died: %s", self.run_id, why)
        self.on_executor_message({"type": "run-complete", "run_id": self.run_id,
                                  "reason": "crash", "error_type": "ExitError",
                                  "error_message": why, "final_state": None,
                                  "time_us": now_us()})

    # -- reporting ------------------------------------------------------------------------------
    def _send_event(self, event: str, payload: dict[str, Any], tag: int,
                    encoded: str | None) -> None:
        self.channel.send(event, payload,
                          callback=lambda push: self.post(("run_sent", self.run_id, tag, push)),
                          encoded=encoded)

    def on_sent(self, tag: int, push: Push) -> None:
        assert push.reply is not None
        flight = self.outbox.inflight
        self.outbox.on_reply(tag, push.reply)
        if self.journal is not None and flight is not None and self.outbox.inflight is not flight:
            self.journal.delivered(self.run_id, flight.event, flight.payload, push.reply.ok)

    def _withhold(self, step_id: str, dataclip_id: str) -> None:
        """A step's output was not stored: later steps and the run must not point at it."""
        if self.events is None:
            return
        self.events.outputs[step_id] = None
        self.events.leaves = [None if d == dataclip_id else d for d in self.events.leaves]

    def _fit_event(self, event: str, payload: dict[str, Any], limit: int) -> list[Event] | None:
        """An event over the frame limit, made smaller (payloads.RunEvents.fit)."""
        return self.events.fit(event, payload, limit) if self.events is not None else None

    def _end_early(self, why: str, open_steps: dict[str, str]) -> list[Event]:
        """An event could not be delivered: the run ends as an exception; what its executor
        still sends is dropped, and the arbiter stops the run if it is still going."""
        if self.events is not None:
            self.events.completed = True
        if not self.executor_done:
            self.executor_done = True
            self.post(("run_undeliverable", self.run_id))
        self.reason = "exception"
        self.state = REPORTING
        return ending_events(self.run_id, why, open_steps, now_us())

    def _finished(self) -> None:
        self.state = DONE

    def give_up(self) -> int:
        """The deadline passed with events undelivered: drop them; returns how many."""
        lost = self.outbox.abandon("expired")
        self.state = DONE
        return lost

    @property
    def stuck(self) -> bool:
        """Waiting on Lightning rather than on the run: the channel is down or a resend is out."""
        flight = self.outbox.inflight
        return not self.outbox.channel_up or (flight is not None and flight.resent)


def scope_collections(plan: dict[str, Any]) -> None:
    """Give the collections credentials only to the steps that use ``collections.``.

    The conversion puts them in ``workflow.credentials``, which the runtime merges into every
    step's configuration (ws-worker's behaviour); but the run token must reach no job that does
    not use collections (DESIGN, "Secrets stay in the supervisor"), so they are merged into
    those steps' own configuration instead; a step's own credential keys win, as in the
    runtime's merge.
    """
    workflow = plan["workflow"]
    shared = workflow.pop("credentials", None)
    if not isinstance(shared, dict):
        return
    for step in workflow["steps"]:
        if "collections." in step.get("expression", ""):
            own = step.get("configuration")
            step["configuration"] = {**shared, **(own if isinstance(own, dict) else {})}


def _describe(reply: Reply) -> str:
    response = reply.response
    if isinstance(response, dict) and "reason" in response:
        return str(response["reason"])
    return reply.status if response is None else str(response)
