"""The supervisor's hot path: its CPU per run under the trivial workload, and where it goes.

Passes at size 2 in ``context`` mode: one plain (the CPU per run to report, read from
``/proc`` by psutil, so no profiler overhead is in it), the same with ``--batch-logs`` (how
much of it is the one-round-trip-per-log-line protocol ws-worker uses by default), and one
under cProfile (``python -m cProfile -o FILE -m pool.cli start``; the profile is written when
the supervisor exits on SIGTERM) whose top functions by own time and by cumulative time are
printed. Goal: ≤ 2 ms of supervisor CPU per run.

    python -m pool.bench.hotpath [--runs 1000]
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

from pool.bench.measure import Cell, measure
from pool.bench.workloads import SlowHttpServer
from pool.devserver.server import DevServer

GOAL_MS = 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=os.environ.get("WORKER_REPO_DIR")
                        or str(Path.cwd() / ".repo"))
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    cell = Cell("context", 2, "trivial", runs=args.runs, budget_s=120)
    workdir = tempfile.mkdtemp(prefix="poolctl-hotpath-")
    profile = os.path.join(workdir, "supervisor.prof")
    with DevServer(record_frames=False) as server, SlowHttpServer() as http:
        plain = measure(server, cell, args.repo_dir, http.url, extra=["--offline"],
                        log_dir=workdir)
        batched = measure(server, cell, args.repo_dir, http.url,
                          extra=["--offline", "--batch-logs"], log_dir=workdir)
        profiled = measure(server, cell, args.repo_dir, http.url, extra=["--offline"],
                           log_dir=workdir, python_args=["-m", "cProfile", "-o", profile])
    print(f"supervisor CPU per run (trivial, context, size 2, {plain.runs} runs, "
          f"{plain.runs_per_s:.1f} runs/s): {plain.supervisor_cpu_ms:.2f} ms "
          f"(goal ≤ {GOAL_MS:g} ms: {'met' if plain.supervisor_cpu_ms <= GOAL_MS else 'NOT met'})"
          f"; executors + shims {plain.executors_cpu_ms:.1f} ms")
    print(f"with --batch-logs: {batched.supervisor_cpu_ms:.2f} ms per run "
          f"({batched.runs_per_s:.1f} runs/s)")
    print(f"under cProfile: {profiled.supervisor_cpu_ms:.2f} ms per run, {profiled.runs} runs "
          f"(profile {profile}; the whole process life, boot included)\n")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(args.top)
        text = out.getvalue()
        print(f"--- top {args.top} by {key} ---")
        print(text[text.index("   ncalls"):] if "   ncalls" in text else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
