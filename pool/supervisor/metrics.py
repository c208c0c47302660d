"""The pool's Prometheus metrics, on a registry of their own (never the process-global one).

Counters and histograms are fed by the arbiter loop's two seams, ``Arbiter.count(name,
**labels)`` and ``Arbiter.observe(name, seconds)``, each called from the single place where
that thing happens, so a count cannot be taken twice or missed on another path; this module
maps those names to metrics. Gauges (executors
by state, claims in flight, readiness) are not pushed at all: they are read from the published
snapshot at scrape time, so they can never disagree with ``poolctl status``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pool.supervisor.snapshot import PoolSnapshot

# Present from the first scrape at 0, so rate() and dashboards work before the first event.
RUN_REASONS = ("success", "fail", "crash", "kill", "cancel", "exception")
RECYCLE_CAUSES = ("runs", "rss", "crash", "timeout", "oom")
# what recovery (recovery.py) did with each run a killed supervisor left in its journal
RECOVERY_OUTCOMES = ("reported", "executed", "left", "expired", "refused")

# Runs last from well under a second to the 300 s default limit.
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Claim → dispatch is the pool's own overhead (join, fetch plan/credentials): sub-second.
DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _SnapshotGauges(Collector):
    """Gauges computed from the latest snapshot whenever /metrics is scraped."""

    def __init__(self, snapshot: Callable[[], PoolSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot()
        executors = GaugeMetricFamily("poolctl_executors", "Executors by state.",
                                      labels=["state"])
        for state, count in snap.executors_by_state().items():
            executors.add_metric([state], count)
        yield executors
        yield GaugeMetricFamily("poolctl_pool_size", "Executors the pool aims to keep.",
                                value=snap.size)
        yield GaugeMetricFamily("poolctl_claims_in_flight",
                                "Claims sent whose reply has not arrived.",
                                value=snap.claims_in_flight)
        yield GaugeMetricFamily("poolctl_queue_joined", "1 while the queue channel is joined.",
                                value=int(snap.queue_joined))
        yield GaugeMetricFamily("poolctl_draining", "1 once the pool stopped claiming.",
                                value=int(snap.draining))
        sandbox = GaugeMetricFamily("poolctl_sandbox", "1, labelled with the sandbox shims run "
                                    "in (uid, namespaces or none).", labels=["mode"])
        sandbox.add_metric([snap.sandbox or "unknown"], 1)
        yield sandbox


class PoolMetrics:
    """Every pool metric, and the small API the arbiter calls where things happen."""

    def __init__(self, snapshot: Callable[[], PoolSnapshot] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("poolctl_runs", "Runs completed, by exit reason.", ["reason"],
                            registry=r)
        self.claim_to_complete = Histogram(
            "poolctl_run_claim_to_complete_seconds",
            "Seconds from the claim reply to run:complete.", buckets=RUN_BUCKETS, registry=r)
        self.claim_to_dispatch = Histogram(
            "poolctl_run_claim_to_dispatch_seconds",
            "Seconds from the claim reply to the run reaching an executor.",
            buckets=DISPATCH_BUCKETS, registry=r)
        self.recycles = Counter("poolctl_shim_recycles", "Shims replaced, by cause.", ["cause"],
                                registry=r)
        self.claims_sent = Counter("poolctl_claims_sent", "Claim requests sent to Lightning.",
                                   registry=r)
        self.claim_demand = Counter(
            "poolctl_claim_demand",
            "Runs asked for in claims. rate(poolctl_runs_claimed) / rate(this) is the claim fill "
            "ratio: 1 while Lightning's queue holds at least what the pool asks for (a backlog; "
            "the busy fraction cannot show it above 1.0), 0 while the queue is empty.",
            registry=r)
        self.claims_with_runs = Counter("poolctl_claims_with_runs",
                                        "Claim replies that carried at least one run.",
                                        registry=r)
        self.claims_after_runs = Counter(
            "poolctl_claims_after_runs",
            "Claims sent at once after a claim that brought runs (ws-worker waits its minimum "
            "backoff first; these are the claims that difference adds).", registry=r)
        self.runs_claimed = Counter("poolctl_runs_claimed", "Runs received in claim replies.",
                                    registry=r)
        self.reconnects = Counter("poolctl_reconnects", "Reconnections to Lightning's socket.",
                                  registry=r)
        self.events_dropped = Counter("poolctl_events_dropped",
                                      "Run-channel events given up on, by event and why.",
                                      ["event", "reason"], registry=r)
        self.events_fitted = Counter(
            "poolctl_events_fitted",
            "Run events made smaller to fit Lightning's frame limit (a dataclip withheld, a log "
            "line or final state redacted), by event.", ["event"], registry=r)
        self.frames_too_big = Counter(
            "poolctl_frames_too_big",
            "Run events Lightning closed the socket on as too big (close code 1009), or that "
            "could not be made to fit; each ends its run as an exception.", ["event"],
            registry=r)
        self.shims_lost = Counter("poolctl_shims_lost",
                                  "Idle shims that died and were replaced before a run came.",
                                  registry=r)
        self.run_tokens_refused = Counter("poolctl_run_tokens_refused",
                                          "Claimed runs whose token failed verification.",
                                          registry=r)
        self.run_joins_refused = Counter("poolctl_run_joins_refused",
                                         "Claimed runs whose run channel join was refused.",
                                         registry=r)
        self.executor_deaths = Counter("poolctl_executor_deaths",
                                       "Executors that exited unasked, by the state they were in.",
                                       ["state"], registry=r)
        self.executor_respawns = Counter("poolctl_executor_respawns",
                                         "Executors started to replace one that exited.",
                                         registry=r)
        self.respawn_backoffs = Counter(
            "poolctl_respawn_backoffs",
            "Times the restart-storm guard delayed respawning executors.", registry=r)
        self.recovered = Counter(
            "poolctl_recovered_runs",
            "Runs a killed supervisor left in the journal, by what recovery did: reported "
            "(as crashed), executed (never dispatched), left (never joined: Lightning's), "
            "expired / refused (the rejoin was refused).", ["outcome"], registry=r)
        for reason in RUN_REASONS:
            self.runs.labels(reason)
        for outcome in RECOVERY_OUTCOMES:
            self.recovered.labels(outcome)
        for cause in RECYCLE_CAUSES:
            self.recycles.labels(cause)
        if snapshot is not None:
            r.register(_SnapshotGauges(snapshot))

    # --- the arbiter's seams: Arbiter.count and Arbiter.observe call these ----------------

    def count(self, name: str, labels: dict[str, str]) -> None:
        """One countable thing happened, named as the arbiter names it (``Arbiter.count``).

        Names without a metric (e.g. ``run_dispatched``) are ignored here; the arbiter keeps
        its own tally of every name in the snapshot's ``counters``.
        """
        if name == "run_completed":
            self.runs.labels(labels.get("reason", "unknown")).inc()
        elif name == "shim_recycled":
            self.recycles.labels(labels.get("cause", "unknown")).inc()
        elif name == "claim_sent":
            self.claims_sent.inc()
            self.claim_demand.inc(int(labels.get("demand", 0)))
        elif name == "claim_returned_runs":
            self.claims_with_runs.inc()
        elif name == "claim_after_runs":
            self.claims_after_runs.inc()
        elif name == "event_fitted":
            self.events_fitted.labels(labels.get("event", "unknown")).inc()
        elif name == "frame_too_big":
            self.frames_too_big.labels(labels.get("event", "unknown")).inc()
        elif name == "shim_lost":
            self.shims_lost.inc()
        elif name == "run_claimed":
            self.runs_claimed.inc()
        elif name == "reconnected":
            self.reconnects.inc()
        elif name == "event_dropped":
            self.events_dropped.labels(labels.get("event", "unknown"),
                                       labels.get("reason", "unknown")).inc()
        elif name == "run_token_refused":
            self.run_tokens_refused.inc()
        elif name == "run_join_refused":
            self.run_joins_refused.inc()
        elif name == "executor_died":
            self.executor_deaths.labels(labels.get("state", "unknown")).inc()
        elif name == "executor_respawned":
            self.executor_respawns.inc()
        elif name == "respawn_backoff":
            self.respawn_backoffs.inc()
        elif name == "run_recovered":
            self.recovered.labels(labels.get("outcome", "unknown")).inc()

    def observe(self, name: str, seconds: float) -> None:
        """A duration was measured (``Arbiter.observe``): claim→dispatch, claim→complete."""
        histogram = {"claim_to_complete": self.claim_to_complete,
                     "claim_to_dispatch": self.claim_to_dispatch}.get(name)
        if histogram is not None:
            histogram.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
