"""``worker:queue``: the join and ``claim``, with Lightning's safety nets for claimed runs.

Lightning pattern-matches ``claim`` on ``demand`` and ``worker_name``: a payload without either
key crashes its channel (the worker sees ``phx_error`` and no reply), which is reproduced here.
Claimed runs go back to ``available`` when the socket died before the reply went out, or when
the worker has not joined ``run:<id>`` within the join timeout (30 s, as newer Lightning).
"""

from __future__ import annotations

import logging
from typing import Any

from pool.devserver.core import ChannelCrash, Core, Reply
from pool.devserver.phoenix import Message
from pool.devserver.runs import Run

log = logging.getLogger("pool.devserver")
TOPIC = "worker:queue"


def join_queue(conn_info: dict, msg: Message) -> Reply:
    """Lightning accepts any join payload here; keep capacity and queues for the record."""
    payload = msg.payload if isinstance(msg.payload, dict) else {}
    conn_info["capacity"] = payload.get("capacity")
    conn_info["queues"] = payload.get("queues")
    return Reply("ok", {})


def _queue_preference(payload: dict) -> list[str] | str:
    """The claim's ``queues`` list, ``["*"]`` when absent (older workers send none)."""
    queues = payload.get("queues", ["*"])
    if not isinstance(queues, list) or not queues or not all(
            isinstance(q, str) and q for q in queues):
        return f"queues must be a non-empty list of queue names, got {queues!r}"
    if "*" in queues[:-1]:
        return "'*' may only be the last queue"
    return queues


def handle_claim(core: Core, msg: Message) -> Reply:
    """Hand out up to ``demand`` runs (at most ``max_runs_per_claim`` when set), each with a
    freshly signed run token."""
    payload = msg.payload
    if not isinstance(payload, dict) or "demand" not in payload or "worker_name" not in payload:
        raise ChannelCrash("claim payload must have 'demand' and 'worker_name' keys "
                           "(Lightning's channel matches no clause and crashes)")
    demand, worker_name = payload["demand"], payload["worker_name"]
    if not isinstance(demand, int) or isinstance(demand, bool) or demand < 0:
        return Reply("error", {"demand": [f"is invalid: {demand!r} is not an integer >= 0"]})
    if worker_name is not None and not isinstance(worker_name, str):
        return Reply("error", {"worker_name": [f"is invalid: {worker_name!r}"]})
    queues = _queue_preference(payload)
    if isinstance(queues, str):
        return Reply("error", {"queues": [queues]})
    if core.max_runs_per_claim is not None:  # like OpenFn's lightning-mock: one run a claim
        demand = min(demand, core.max_runs_per_claim)
    runs = core.book.claim(demand, queues, worker_name or None)
    granted: list[tuple[Run, int]] = [(run, run.claim_generation) for run in runs]
    response: dict[str, Any] = {"runs": [
        {"id": run.id, "token": core.tokens.sign(run.id, core.token_lifetime(run))}
        for run in runs]}

    def start_join_timers() -> None:
        assert core.loop is not None
        for run, generation in granted:
            core.loop.call_later(core.join_timeout_s, _expire_claim, core, run, generation)

    def roll_back_unsent() -> None:
        for run, generation in granted:
            if core.book.roll_back(run, generation):
                log.warning("run %s rolled back to available: the claiming socket closed "
                            "before the reply", run.id)
        if granted:
            core.push_work_available()

    return Reply("ok", response, on_sent=start_join_timers, on_unsent=roll_back_unsent)


def _expire_claim(core: Core, run: Run, generation: int) -> None:
    if core.book.roll_back(run, generation):
        log.warning("run %s rolled back to available: not joined within %ss of its claim",
                    run.id, core.join_timeout_s)
        core.push_work_available()
