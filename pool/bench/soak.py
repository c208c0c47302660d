"""``make soak``: does the warm pool leak? 10,000 trivial runs at size 2 in ``context`` mode with
recycling on, against the dev server, the pool's total RSS sampled every second.

Prints the median RSS of each block of 1,000 runs and the runs by reason. Target: the block
medians from run 2,000 to 10,000 each within ±10 % of their common median (the first blocks
are the warm-up: JIT, adaptor caches), and no run without ``run:complete``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from pool.bench.measure import BenchError, Cell, feed
from pool.bench.pool_process import PoolFailed, PoolProcess
from pool.bench.proctree import MemorySampler
from pool.bench.results import stem, write_json
from pool.bench.table import render
from pool.bench.workloads import specs
from pool.devserver.server import DevServer

BLOCK = 1000
TOLERANCE = 0.10


def block_medians(samples: list[tuple[int, float]], runs: int) -> list[float | None]:
    """Median RSS of the samples taken while each block of ``BLOCK`` runs completed."""
    blocks: list[list[float]] = [[] for _ in range((runs + BLOCK - 1) // BLOCK)]
    for done, rss in samples:
        blocks[min(done // BLOCK, len(blocks) - 1)].append(rss)
    return [statistics.median(b) if b else None for b in blocks]


def steady(medians: list[float | None], first_block: int = 2) -> tuple[bool, float]:
    """(every block from ``first_block`` on within ±TOLERANCE of their median, worst spread)."""
    values = [m for m in medians[first_block:] if m is not None]
    if not values:
        return False, float("nan")
    centre = statistics.median(values)
    worst = max(abs(v - centre) / centre for v in values)
    return worst <= TOLERANCE, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=os.environ.get("WORKER_REPO_DIR")
                        or str(Path.cwd() / ".repo"))
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=2)
    parser.add_argument("--recycle-runs", type=int, default=500)
    args = parser.parse_args(argv)
    out = stem("soak")
    cell = Cell("context", args.size, "trivial", runs=args.runs, budget_s=float("inf"))
    try:
        return soak(args, cell, out)
    except (BenchError, PoolFailed) as exc:
        print(f"make soak: {exc}", file=sys.stderr)
        return 1


def soak(args: argparse.Namespace, cell: Cell, out: Path) -> int:
    with DevServer(record_frames=False) as server, \
            PoolProcess(server, args.size, "context", args.repo_dir,
                        ["--offline", "--recycle-runs", str(args.recycle_runs)],
                        log_dir=str(out.parent)) as pool, \
            tqdm(total=args.runs, unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        with MemorySampler(pool.pid, 1.0, progress=lambda: bar.n) as sampler:
            ids = feed(server, cell, specs("trivial", ""), lambda: bar.update())
        records = [server.run(run_id) for run_id in ids]
        exit_code = pool.stop()
    rss = [(done, s.total_rss_mb) for done, s in sampler.samples]
    medians = block_medians(rss, args.runs)
    ok, worst = steady(medians)
    reasons = Counter(r["reason"] or r["state"] for r in records)
    incomplete = [r["id"] for r in records
                  if not any(e["event"] == "run:complete" for e in r["events"])]
    rows = [[f"{i * BLOCK + 1}-{min((i + 1) * BLOCK, args.runs)}",
             "-" if m is None else f"{m:.0f}"] for i, m in enumerate(medians)]
    print(f"{len(records)} trivial runs, size {args.size}, context, --recycle-runs "
          f"{args.recycle_runs}; pool RSS (supervisor + executors + shims) sampled every "
          f"second ({len(rss)} samples)\n")
    print(render(("runs", "median RSS MB"), rows))
    print("\nruns by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    print(f"runs without run:complete: {len(incomplete)}")
    print(f"pool exit code after SIGTERM: {exit_code}")
    print(f"\ntarget: block medians from run {2 * BLOCK} on within ±{TOLERANCE:.0%} of each "
          f"other: worst {worst:.1%} ({'met' if ok else 'NOT met'}); zero runs without "
          f"run:complete ({'met' if not incomplete else 'NOT met'})")
    path = write_json(out.with_suffix(".json"), {
        "runs": len(records), "size": args.size, "recycle_runs": args.recycle_runs,
        "block_median_rss_mb": medians, "rss_samples": rss, "reasons": dict(reasons),
        "without_run_complete": incomplete, "steady": ok, "worst_spread": worst})
    print(f"wrote {path} (pool log {pool.log_path})")
    return 0 if ok and not incomplete and reasons.get("success") == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
