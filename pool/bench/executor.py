"""``make bench-executor``: one trivial language-common job through a real executor per mode.

A benchmark, not a test: it prints a table. For each isolation mode (noop, context, strict,
cold) one executor runs the same one-step job back to back: runs/s (including the wait for
``ready``, so strict pays for its standby), p50/p95 dispatch→run-complete, p50 dispatch→first
step-start, and CPU-seconds per run of the executor and every shim it started (reaped shims
count through the executor's children times). Ratios are to ``cold``. ``strict`` also gets a
series with runs arriving 2 s apart, so a warm standby is always waiting — the case its fast
first step is for.

Targets (issue 4): context p50 dispatch→complete ≥ 50× lower than cold; strict (2 s apart)
p50 dispatch→first step-start ≥ 10× lower than cold.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psutil

from pool.executor.handle import ExecutorHandle

COMMON = "@openfn/language-common@3.3.4"
JOB = "fn(state => ({ ...state, data: { ok: true } }))"
DEFAULT_RUNS = {"noop": 300, "context": 150, "strict": 20, "cold": 10}


@dataclass
class Series:
    label: str
    total: list[float] = field(default_factory=list)
    first_step: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    failures: int = 0

    @property
    def runs(self) -> int:
        return len(self.total)


def plan() -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "options": {},
            "workflow": {"steps": [{"id": "a", "name": "a", "expression": JOB,
                                    "adaptors": [COMMON], "configuration": {}}]}}


def cpu_seconds(pid: int) -> float:
    """CPU of an executor, its live shims, and the shims it already reaped."""
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in proc.children(recursive=True):
        try:
            ct = child.cpu_times()
            total += ct.user + ct.system
        except psutil.NoSuchProcess:
            pass
    return total


def one_run(handle: ExecutorHandle, series: Series, timeout: float = 120) -> None:
    run_id = str(uuid.uuid4())
    start = time.perf_counter()
    handle.run(run_id, plan(), {"data": {}}, {"timeout_ms": 60_000})
    first = None
    while True:
        message = handle.recv(timeout)
        if message is None:
            raise RuntimeError(f"{series.label}: no answer within {timeout}s")
        kind = message["type"]
        if kind == "step-start" and first is None:
            first = time.perf_counter() - start
        elif kind == "run-complete":
            series.total.append(time.perf_counter() - start)
            series.first_step.append(first if first is not None else float("nan"))
            if message["reason"] != "success":
                series.failures += 1
                print(f"  {series.label}: run ended {message['reason']}: "
                      f"{message.get('error_message')}", file=sys.stderr)
        elif kind == "ready":
            return


def bench(mode: str, runs: int, repo_dir: str, gap: float = 0.0, label: str = "") -> Series:
    init = {"node": "node", "repo_dir": repo_dir, "isolation": mode, "prewarm": [COMMON],
            "adaptors": {"offline": True},
            "limits": {"timeout_ms": 60_000, "memory_mb": 500, "payload_mb": 10,
                       "log_payload_mb": 1},
            "recycle": {"runs": 100_000, "jitter": 0, "rss_mb": 4000}}
    series = Series(label or mode)
    handle = ExecutorHandle.spawn(init)
    try:
        handle.wait_ready(120)
        one_run(handle, Series("warm-up"))  # first-run effects (JIT, page cache) are not a mode's
        cpu0, t0 = cpu_seconds(handle.pid), time.perf_counter()
        for _ in range(runs):
            if gap:
                time.sleep(gap)
            one_run(handle, series)
        series.wall = time.perf_counter() - t0 - gap * runs
        series.cpu = cpu_seconds(handle.pid) - cpu0
    finally:
        handle.close()
    return series


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def table(results: list[Series], baseline: Series) -> str:
    base_p50 = statistics.median(baseline.total)
    base_first = statistics.median(baseline.first_step)
    rows = [("mode", "runs", "runs/s", "p50 ms", "p95 ms", "p50 1st step ms", "CPU s/run",
             "p50 vs cold", "1st step vs cold")]
    for s in results:
        p50, first = statistics.median(s.total), statistics.median(s.first_step)
        rows.append((
            s.label, str(s.runs), f"{s.runs / s.wall:.1f}" if s.wall else "-",
            f"{p50 * 1000:.1f}", f"{pct(s.total, 0.95) * 1000:.1f}", f"{first * 1000:.1f}",
            f"{s.cpu / s.runs:.3f}", f"{base_p50 / p50:.0f}x", f"{base_first / first:.0f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=os.environ.get("WORKER_REPO_DIR")
                        or os.path.join(os.getcwd(), ".repo"))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run count")
    args = parser.parse_args(argv)
    results = []
    for mode in ("noop", "context", "strict", "cold"):
        runs = max(3, int(DEFAULT_RUNS[mode] * args.scale))
        print(f"benchmarking {mode}: {runs} runs back to back...", file=sys.stderr, flush=True)
        results.append(bench(mode, runs, args.repo_dir))
    print("benchmarking strict with runs 2 s apart...", file=sys.stderr, flush=True)
    results.append(bench("strict", max(3, int(8 * args.scale)), args.repo_dir, gap=2.0,
                         label="strict (2 s apart)"))
    cold = next(s for s in results if s.label == "cold")
    print(f"\none-step language-common job ({JOB}); ratios are cold's time / the mode's\n")
    print(table(results, cold))
    context = next(s for s in results if s.label == "context")
    spaced = results[-1]
    p50_ratio = statistics.median(cold.total) / statistics.median(context.total)
    first_ratio = statistics.median(cold.first_step) / statistics.median(spaced.first_step)
    print(f"\ntarget context p50 >= 50x lower than cold: {p50_ratio:.0f}x "
          f"({'met' if p50_ratio >= 50 else 'NOT met'})")
    print(f"target strict (2 s apart) p50 first step >= 10x lower than cold: {first_ratio:.0f}x "
          f"({'met' if first_ratio >= 10 else 'NOT met'})")
    failures = sum(s.failures for s in results)
    if failures:
        print(f"\n{failures} runs did not succeed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
