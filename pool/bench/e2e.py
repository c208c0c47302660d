"""``make bench``: the whole pool end to end against the dev server on loopback, side by side.

Cells (each with a time budget, so the run fits in ~10 minutes on 2 cores): ``context`` and
``strict`` at sizes 1, 2, 4; ``cold`` at 2; ``noop`` at 2 (the floor: the same Lightning
events, no Node) — for the trivial one-step job and for the realistic mix; plus ``strict`` and
``cold`` at size 1 with trivial runs arriving 2 s apart (the case strict's warm standby is
for). Prints the table with ratios to ``cold`` and ``noop`` and the issue's three targets;
writes ``bench/results/<timestamp>-bench.json`` and a PNG chart.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from pool.bench import chart, table
from pool.bench.measure import BenchError, Cell, measure
from pool.bench.measurement import Measurement
from pool.bench.pool_process import PoolFailed
from pool.bench.results import stem, write_json
from pool.bench.workloads import WORKLOADS, SlowHttpServer
from pool.devserver.server import DevServer

SPACED_GAP_S = 2.0


def cells(budget_s: float, spaced_budget_s: float) -> list[Cell]:
    out = []
    for workload in WORKLOADS:
        for iso, sizes in (("noop", (2,)), ("context", (1, 2, 4)), ("strict", (1, 2, 4)),
                           ("cold", (2,))):
            out += [Cell(iso, size, workload, runs=2000, budget_s=budget_s) for size in sizes]
    out += [Cell(iso, 1, "trivial", SPACED_GAP_S, runs=1000, budget_s=spaced_budget_s)
            for iso in ("strict", "cold")]
    return out


def find(points: list[Measurement], iso: str, size: int, workload: str = "trivial",
         gap: float = 0.0) -> Measurement:
    return next(p for p in points if (p.isolation, p.size, p.workload, p.gap_s)
                == (iso, size, workload, gap))


def targets(points: list[Measurement]) -> list[tuple[str, float, bool]]:
    """The issue's three ratios, all from this run: (statement with value, value, met)."""
    noop, ctx, cold = (find(points, iso, 2) for iso in ("noop", "context", "cold"))
    strict_1, cold_1 = (find(points, iso, 1, gap=SPACED_GAP_S) for iso in ("strict", "cold"))
    a = ctx.p50_ms / noop.p50_ms
    b = ctx.runs_per_s / cold.runs_per_s
    c = strict_1.p50_ms / cold_1.p50_ms
    return [
        (f"context claim→complete p50 ≤ 3x noop's: {ctx.p50_ms:.0f} / {noop.p50_ms:.0f} ms "
         f"= {a:.2f}x", a, a <= 3),
        (f"context throughput at size 2 ≥ 20x cold's: {ctx.runs_per_s:.1f} / "
         f"{cold.runs_per_s:.2f} runs/s = {b:.1f}x", b, b >= 20),
        (f"strict p50 ≤ 1/5 of cold's at size 1, runs 2 s apart: {strict_1.p50_ms:.0f} / "
         f"{cold_1.p50_ms:.0f} ms = 1/{1 / c:.1f}", c, c <= 0.2),
    ]


def run_cells(plan: list[Cell], repo_dir: str, log_dir: str) -> list[Measurement]:
    """Measure every cell against one dev server, with a progress bar on stderr."""
    points: list[Measurement] = []
    with DevServer(record_frames=False) as server, SlowHttpServer() as http, \
            tqdm(total=len(plan), unit="cell", file=sys.stderr, dynamic_ncols=True) as bar:
        for cell in plan:
            bar.set_postfix_str(f"{cell.isolation}@{cell.size} {cell.workload}")
            with tqdm(unit="run", file=sys.stderr, leave=False, position=1,
                      dynamic_ncols=True) as runs:
                points.append(measure(server, cell, repo_dir, http.url, runs.update,
                                      extra=["--offline"], log_dir=log_dir))
            bar.update()
    return points


def report(points: list[Measurement]) -> str:
    baselines = {w: (find(points, "cold", 2, w), find(points, "noop", 2, w)) for w in WORKLOADS}
    lines = ["claim→complete and enqueue→claim (wait) are the dev server's times; runs/s with a "
             "backlog of 2 runs per executor; CPU per run; PSS/RSS = the pool's peak", "",
             table.measurements(points, baselines), "", "targets:"]
    lines += [f"  {'met    ' if met else 'NOT met'}  {text}" for text, _, met in targets(points)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=os.environ.get("WORKER_REPO_DIR")
                        or str(Path.cwd() / ".repo"))
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of runs per cell (default 20)")
    parser.add_argument("--spaced-budget", type=float, default=24.0,
                        help="seconds of the 2-s-apart series (default 24: 12 runs)")
    args = parser.parse_args(argv)
    chart.pyplot()  # no matplotlib: fail now, not after ten minutes of measuring
    out = stem("bench")
    log_dir = str(out) + "-logs"
    os.makedirs(log_dir, exist_ok=True)
    try:
        points = run_cells(cells(args.budget, args.spaced_budget), args.repo_dir, log_dir)
    except (BenchError, PoolFailed) as exc:
        print(f"make bench: {exc}", file=sys.stderr)
        return 1
    text = report(points)
    print(text)
    write_json(out.with_suffix(".json"), {"cells": [p.to_dict() for p in points],
                                          "targets": [t[0] for t in targets(points)]})
    chart.draw(points, out.with_suffix(".png"), "poolctl end to end (make bench)")
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.png')} "
          f"(pool logs in {log_dir}/)")
    failures = sum(p.failures for p in points)
    if failures:
        print(f"{failures} runs did not succeed: see the pool logs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
