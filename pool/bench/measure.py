"""Measure one cell: start a pool, feed it runs, read the dev server's times and the tree's
CPU and memory, and reduce it all to a :class:`Measurement`.

Arrival patterns: ``gap_s = 0`` keeps a backlog of two runs per executor waiting, so no
executor ever idles for lack of work (the pool's capacity; enqueue→claim then includes the
time a run queued behind others); ``gap_s > 0`` enqueues one run every ``gap_s`` seconds
whatever happens (an idle pool taking sparse work; enqueue→claim is then admission alone).

Each cell first runs a warm-up (two runs per executor, every run of the mix at least once),
so adaptor loading and the JIT are not billed to the first measured runs. It stops feeding
when ``runs`` are enqueued or its ``budget_s`` is spent, and waits for what is in flight.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pool.bench import proctree
from pool.bench.measurement import Measurement, percentile
from pool.bench.pool_process import PoolProcess
from pool.bench.workloads import RunSpec, specs
from pool.devserver.server import DevServer

RUN_DEADLINE_S = 120.0  # one run waited for this long means the pool is stuck, not slow


@dataclass(frozen=True)
class Cell:
    """What to measure: an isolation at a size, a workload and an arrival pattern."""

    isolation: str
    size: int
    workload: str = "trivial"
    gap_s: float = 0.0
    runs: int = 200          # at most this many measured runs...
    budget_s: float = 30.0   # ...enqueued within this many seconds
    sandbox: str = ""        # --sandbox for this cell; "" = the pool's default (auto)

    @property
    def label(self) -> str:
        """The isolation as tables show it: ``strict[none]`` for strict without a sandbox."""
        return f"{self.isolation}[{self.sandbox}]" if self.sandbox else self.isolation


class BenchError(RuntimeError):
    """A cell could not be measured: the pool failed, or a run never finished."""


def enqueue(server: DevServer, spec: RunSpec) -> str:
    return server.enqueue(spec.plan, credentials=spec.credentials or None,
                          dataclips=spec.dataclips or None)


def wait(server: DevServer, run_id: str) -> dict[str, Any]:
    try:
        return server.wait_for_run(run_id, RUN_DEADLINE_S)
    except TimeoutError as exc:
        raise BenchError(f"a run did not finish within {RUN_DEADLINE_S:.0f} s: {exc}") from None


def feed(server: DevServer, cell: Cell, stream: Any, on_done: Callable[[], None]) -> list[str]:
    """Enqueue the cell's runs in its arrival pattern; return their ids once all are final."""
    ids: list[str] = []
    pending: deque[str] = deque()
    backlog = 2 * cell.size
    start = time.monotonic()
    while len(ids) < cell.runs and time.monotonic() - start < cell.budget_s:
        if cell.gap_s:
            time.sleep(max(0.0, start + len(ids) * cell.gap_s - time.monotonic()))
        elif len(pending) >= backlog:
            wait(server, pending.popleft())
            on_done()
            continue
        run_id = enqueue(server, next(stream))
        ids.append(run_id)
        pending.append(run_id)
    while pending:
        wait(server, pending.popleft())
        on_done()
    return ids


def reduce(cell: Cell, records: list[dict[str, Any]], cpu0: proctree.CpuSample,
           cpu1: proctree.CpuSample, mem: proctree.MemorySample | None,
           boots: float = float("nan")) -> Measurement:
    """Figures from the dev server's records (µs) and the tree's samples."""
    n = len(records)
    times = [r["times"] for r in records]
    service = [(t["completed"] - t["claimed"]) / 1000 for t in times]
    waits = [(t["claimed"] - t["enqueued"]) / 1000 for t in times]
    wall = (max(t["completed"] for t in times) - min(t["enqueued"] for t in times)) / 1e6
    return Measurement(
        isolation=cell.label, size=cell.size, workload=cell.workload, gap_s=cell.gap_s,
        runs=n, failures=sum(r["state"] != "success" for r in records), wall_s=round(wall, 3),
        runs_per_s=round(n / wall, 3) if wall > 0 else 0.0,
        p50_ms=round(percentile(service, 0.50), 2), p95_ms=round(percentile(service, 0.95), 2),
        p99_ms=round(percentile(service, 0.99), 2),
        wait_p50_ms=round(percentile(waits, 0.50), 2),
        wait_p95_ms=round(percentile(waits, 0.95), 2),
        supervisor_cpu_ms=round((cpu1.supervisor_s - cpu0.supervisor_s) * 1000 / n, 3),
        executors_cpu_ms=round((cpu1.rest_s - cpu0.rest_s) * 1000 / n, 3),
        supervisor_pss_mb=round(mem.supervisor_pss_mb, 1) if mem else 0.0,
        executors_pss_mb=round(mem.rest_pss_mb, 1) if mem else 0.0,
        pool_rss_mb=round(mem.total_rss_mb, 1) if mem else 0.0,
        shim_boots_per_run=round(boots / n, 3))


def measure(server: DevServer, cell: Cell, repo_dir: str, http_url: str,
            on_done: Callable[[], None] = lambda: None, extra: Sequence[str] = (),
            log_dir: str | None = None, own: Sequence[RunSpec] = (),
            python_args: Sequence[str] = (),
            prepared: Callable[[], None] | None = None) -> Measurement:
    """Start a pool for ``cell``, warm it, measure it, stop it. ``own`` runs (cycled) replace
    the cell's built-in workload. ``prepared`` (strict, context) waits until the pool's
    background preparing is done, after a first warm-up; a second warm-up follows."""
    stream = itertools.cycle(own) if own else specs(cell.workload, http_url)
    if cell.sandbox:
        extra = [*extra, "--sandbox", cell.sandbox]
    with PoolProcess(server, cell.size, cell.isolation, repo_dir, extra, log_dir,
                     python_args) as pool:
        warm_up(server, cell, stream, pool)
        if prepared is not None:  # the pool prepares in the background: measure what it made
            prepared()
            warm_up(server, cell, stream, pool)
        with proctree.ShimCounter(pool.pid) as shims:
            # the window begins and ends with the same live shims (every standby booted), so
            # the boots inside it are the runs' own
            steady = shims.settle(None)
            start = shims.begin()
            with proctree.MemorySampler(pool.pid, interval_s=0.5) as sampler, \
                    proctree.CpuTracker(pool.pid, interval_s=0.1) as cpu:
                try:
                    ids = feed(server, cell, stream, on_done)
                except BenchError as exc:
                    raise pool.failed(f"{cell.isolation}@{cell.size}: {exc}") from None
                steady = shims.settle(len(start)) and steady
            boots = len(shims.seen - start) if steady else float("nan")
        if sampler.peak() is None and sampler.denied:
            raise BenchError(f"{cell.isolation}@{cell.size}: the pool's memory could not be "
                             f"read ({sampler.denied})")
        records = [server.run(run_id) for run_id in ids]
        return reduce(cell, records, proctree.CpuSample(0.0, 0.0), cpu.result(), sampler.peak(),
                      boots)


def warm_up(server: DevServer, cell: Cell, stream: Any, pool: PoolProcess) -> None:
    """Two runs per executor (at least four), so adaptor loading and the JIT are not billed
    to the first measured runs."""
    warm = [enqueue(server, next(stream)) for _ in range(max(2 * cell.size, 4))]
    for run_id in warm:
        record = wait(server, run_id)
        if record["state"] != "success":
            raise BenchError(f"{cell.isolation}@{cell.size}: warm-up run ended "
                             f"{record['state']}: {record['error_message']} "
                             f"(log {pool.log_path})")
