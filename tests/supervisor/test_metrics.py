"""The metrics API the arbiter calls, read back through prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pool.supervisor.metrics import RECYCLE_CAUSES, RUN_REASONS, PoolMetrics
from pool.supervisor.snapshot import ExecutorView, PoolSnapshot


def samples(metrics: PoolMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_reason_and_cause_is_exported_from_the_start() -> None:
    got = samples(PoolMetrics())
    for reason in RUN_REASONS:
        assert got[("poolctl_runs_total", (("reason", reason),))] == 0
    for cause in RECYCLE_CAUSES:
        assert got[("poolctl_shim_recycles_total", (("cause", cause),))] == 0


def test_each_arbiter_count_lands_in_its_metric() -> None:
    m = PoolMetrics()
    m.count("run_completed", {"reason": "success"})
    m.count("run_completed", {"reason": "kill"})
    m.observe("claim_to_complete", 1.5)
    m.observe("claim_to_dispatch", 0.02)
    for cause in ("runs", "rss", "runs"):
        m.count("shim_recycled", {"cause": cause})
    m.count("claim_sent", {"workloop": "manual>*", "demand": "3"})
    m.count("claim_sent", {"workloop": "manual>*", "demand": "1"})
    m.count("claim_returned_runs", {})
    for _ in range(3):
        m.count("run_claimed", {})
    m.count("reconnected", {})
    m.count("event_dropped", {"event": "run:log", "reason": "timeout"})
    m.count("run_token_refused", {})
    m.count("run_join_refused", {})
    m.count("executor_died", {"state": "busy"})
    m.count("executor_respawned", {})
    m.count("respawn_backoff", {})
    m.count("claim_after_runs", {"workloop": "manual>*"})
    m.count("event_fitted", {"event": "step:complete"})
    m.count("frame_too_big", {"event": "run:complete"})
    m.count("shim_lost", {})
    m.count("run_dispatched", {})  # tallied by the arbiter only: no metric, no error
    got = samples(m)
    assert got[("poolctl_runs_total", (("reason", "success"),))] == 1
    assert got[("poolctl_runs_total", (("reason", "kill"),))] == 1
    assert got[("poolctl_run_claim_to_complete_seconds_count", ())] == 1
    assert got[("poolctl_run_claim_to_complete_seconds_bucket", (("le", "2.5"),))] == 1
    assert got[("poolctl_run_claim_to_complete_seconds_bucket", (("le", "1.0"),))] == 0
    assert got[("poolctl_run_claim_to_dispatch_seconds_count", ())] == 1
    assert got[("poolctl_shim_recycles_total", (("cause", "runs"),))] == 2
    assert got[("poolctl_shim_recycles_total", (("cause", "rss"),))] == 1
    assert got[("poolctl_claims_sent_total", ())] == 2
    assert got[("poolctl_claim_demand_total", ())] == 4  # 3 of the 4 runs asked for came
    assert got[("poolctl_claims_with_runs_total", ())] == 1
    assert got[("poolctl_runs_claimed_total", ())] == 3
    assert got[("poolctl_reconnects_total", ())] == 1
    assert got[("poolctl_events_dropped_total", (("event", "run:log"), ("reason", "timeout")))] \
        == 1
    assert got[("poolctl_run_tokens_refused_total", ())] == 1
    assert got[("poolctl_run_joins_refused_total", ())] == 1
    assert got[("poolctl_executor_deaths_total", (("state", "busy"),))] == 1
    assert got[("poolctl_executor_respawns_total", ())] == 1
    assert got[("poolctl_respawn_backoffs_total", ())] == 1
    assert got[("poolctl_claims_after_runs_total", ())] == 1
    assert got[("poolctl_events_fitted_total", (("event", "step:complete"),))] == 1
    assert got[("poolctl_frames_too_big_total", (("event", "run:complete"),))] == 1
    assert got[("poolctl_shims_lost_total", ())] == 1


def test_gauges_are_read_from_the_snapshot_at_scrape_time() -> None:
    current = [PoolSnapshot()]
    m = PoolMetrics(lambda: current[0])
    assert samples(m)[("poolctl_executors", (("state", "idle"),))] == 0
    current[0] = PoolSnapshot(
        executors=(ExecutorView(1, "idle"), ExecutorView(2, "idle"), ExecutorView(3, "busy")),
        queue_joined=True, draining=True, size=3, claims_in_flight=1)
    got = samples(m)
    assert got[("poolctl_executors", (("state", "idle"),))] == 2
    assert got[("poolctl_executors", (("state", "busy"),))] == 1
    assert got[("poolctl_pool_size", ())] == 3
    assert got[("poolctl_queue_joined", ())] == 1
    assert got[("poolctl_draining", ())] == 1


def test_pools_have_their_own_registries() -> None:
    first, second = PoolMetrics(), PoolMetrics()  # the global registry would refuse a twin
    first.count("run_completed", {"reason": "success"})
    assert samples(second)[("poolctl_runs_total", (("reason", "success"),))] == 0
    assert REGISTRY.get_sample_value("poolctl_runs_total", {"reason": "success"}) is None
