"""Partial claims: against a Lightning that hands out one run per claim (as OpenFn's own mock
does), the pool claims again at once while a claim brought runs and it has room, so it runs
as many runs at once as it has executors (issue 13, item 4)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from pool.devserver.server import DevServer
from tests.supervisor.conftest import job, plan, wait_run

SIZE = 4
RUN_S = 2.0  # long enough that runs started one backoff (1 s) apart would not all overlap
BODY = f"fn(state => new Promise(resolve => setTimeout(() => resolve(state), {int(RUN_S * 1000)})));"


@pytest.fixture
def lightning() -> Iterator[DevServer]:
    with DevServer(max_runs_per_claim=1) as dev:
        yield dev


def most_at_once(runs: list[dict]) -> int:
    """The most runs that were running (started, not completed) at the same moment."""
    edges = sorted([(r["times"]["started"], 1) for r in runs]
                   + [(r["times"]["completed"], -1) for r in runs])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_one_run_per_claim_still_fills_the_pool(lightning: DevServer, start_pool) -> None:
    # queued before the pool joins, so no work-available push wakes it: only the claim loop;
    # as many runs as executors, so no finished run wakes a claim before all have started
    ids = [lightning.enqueue(plan(job(BODY)), wakeup=False) for _ in range(SIZE)]
    # ws-worker's default backoff (1 s minimum): a pause after each claim would show
    pool = start_pool("--size", str(SIZE), "--backoff", "1/10")
    runs = [wait_run(lightning, run_id) for run_id in ids]
    assert [r["state"] for r in runs] == ["success"] * len(ids), lightning.rejections
    peak = most_at_once(runs)
    print(f"most runs at once: {peak} of size {SIZE}")
    assert peak == SIZE
    # the claims that followed one bringing a run (ws-worker would have waited) are counted
    with urllib.request.urlopen(f"http://127.0.0.1:{pool.port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("poolctl_claims_after_runs_total"))
    assert float(line.split()[-1]) >= SIZE - 1
    assert pool.stop() == 0
