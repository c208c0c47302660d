"""``make bench``: the whole pool end to end against the dev server on loopback, side by side.

Cells (each with a time budget, so the run fits in ~10 minutes on 2 cores): ``context`` and
``strict`` at sizes 1, 2, 4; ``cold`` at 2; ``noop`` at 2 (the floor: the same Lightning
events, no Node) — for the trivial one-step job and for the realistic mix; plus ``strict`` and
``cold`` at size 1 with trivial runs arriving 2 s apart (the case strict's warm standby is
for). Prints the table with ratios to ``cold`` and ``noop`` and the issue's three targets;
writes ``bench/results/<timestamp>-bench.json`` and a PNG chart. ``--cells context@2,noop@2``
measures only those cells (to iterate in a minute; ``make bench`` runs them all).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from pool.adaptors import Adaptor, AdaptorRepo
from pool.bench import chart, sandbox_cost, table
from pool.bench.measure import BenchError, Cell, measure
from pool.bench.measurement import Measurement
from pool.bench.pool_process import PoolFailed
from pool.bench.results import stem, write_json
from pool.bench.shim_run import measure_shim
from pool.bench.workloads import ADAPTORS, COMMON, WORKLOADS, SlowHttpServer
from pool.devserver.server import DevServer
from pool.executor.process import PREPARED_MODES
from pool.executor.sandbox import resolve_mode, shim_uid
from pool.executor.shim import SHIM_SCRIPT, node_flags
from pool.prepare import COMPILE_CACHE_MIN_NODE, CompileCache, PreparedRepo, PreparedShim
from pool.settings import default_of

SPACED_GAP_S = 2.0
PREPARE_WAIT_S = 180.0
RUN_MEMORY_MB = default_of("run_memory_mb")


def cells(budget_s: float, spaced_budget_s: float) -> list[Cell]:
    out = []
    for workload in WORKLOADS:
        for iso, sizes in (("noop", (2,)), ("context", (1, 2, 4)), ("strict", (1, 2, 4)),
                           ("cold", (2,))):
            out += [Cell(iso, size, workload, runs=2000, budget_s=budget_s) for size in sizes]
    # what the sandbox costs strict, in this same run: strict without one (issue 12)
    out += [Cell("strict", size, "trivial", runs=2000, budget_s=budget_s, sandbox="none")
            for size in (1, 2)]
    out += [Cell(iso, 1, "trivial", SPACED_GAP_S, runs=1000, budget_s=spaced_budget_s)
            for iso in ("strict", "cold")]
    return out


def select(plan: list[Cell], spec: str) -> list[Cell]:
    """The cells named in ``spec`` (``context@2,strict[none]@2:mix``: isolation@size, the trivial
    workload unless ``:workload`` is given; ``spaced``: the strict and cold series with runs
    2 s apart), to iterate on a few cells in seconds rather than minutes."""
    wanted = []
    spaced = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        if name == "spaced":
            spaced = [c for c in plan if c.gap_s]
            continue
        head, _, workload = name.partition(":")
        iso, _, size = head.partition("@")
        if not size.isdigit() or workload not in ("", *WORKLOADS):
            raise ValueError(f"--cells: {name!r} is not isolation@size[:workload]")
        wanted.append((iso, int(size), workload or "trivial"))
    chosen = [c for c in plan if c.gap_s == 0 and (c.label, c.size, c.workload) in wanted]
    missing = set(wanted) - {(c.label, c.size, c.workload) for c in chosen}
    if missing:
        raise ValueError("--cells: no such cell: " + ", ".join(
            f"{iso}@{size}:{workload}" for iso, size, workload in sorted(missing)))
    return chosen + spaced


def find(points: list[Measurement], iso: str, size: int, workload: str = "trivial",
         gap: float = 0.0) -> Measurement:
    return next(p for p in points if (p.isolation, p.size, p.workload, p.gap_s)
                == (iso, size, workload, gap))


def targets(points: list[Measurement]) -> list[tuple[str, float, bool]]:
    """The issue's three ratios, all from this run: (statement with value, value, met); a
    ratio whose cells were not measured (``--cells``) is left out."""
    out = []
    with contextlib.suppress(StopIteration):
        noop, ctx = find(points, "noop", 2), find(points, "context", 2)
        a = ctx.p50_ms / noop.p50_ms
        out.append((f"context claim→complete p50 ≤ 3x noop's: {ctx.p50_ms:.0f} / "
                    f"{noop.p50_ms:.0f} ms = {a:.2f}x", a, a <= 3))
    with contextlib.suppress(StopIteration):
        ctx, cold = find(points, "context", 2), find(points, "cold", 2)
        b = ctx.runs_per_s / cold.runs_per_s
        out.append((f"context throughput at size 2 ≥ 20x cold's: {ctx.runs_per_s:.1f} / "
                    f"{cold.runs_per_s:.2f} runs/s = {b:.1f}x", b, b >= 20))
    with contextlib.suppress(StopIteration):
        strict, cold = find(points, "strict", 2), find(points, "cold", 2)
        d = strict.tree_cpu_ms / cold.tree_cpu_ms
        out.append((f"strict CPU per run (whole tree) ≤ 250 ms: {strict.tree_cpu_ms:.0f} ms",
                    strict.tree_cpu_ms, strict.tree_cpu_ms <= 250))
        out.append((f"strict CPU per run ≤ 0.45x cold's: {strict.tree_cpu_ms:.0f} / "
                    f"{cold.tree_cpu_ms:.0f} ms = {d:.2f}x", d, d <= 0.45))
    with contextlib.suppress(StopIteration):
        strict = find(points, "strict", 2)
        out.append((f"strict at size 2 ≥ 5 runs/s: {strict.runs_per_s:.1f}", strict.runs_per_s,
                    strict.runs_per_s >= 5))
    for p in points:
        if p.isolation in ("strict", "cold"):
            out.append((f"{p.label}: shim boots per run = 1.0: {p.shim_boots_per_run:.2f}",
                        p.shim_boots_per_run, abs(p.shim_boots_per_run - 1.0) < 0.02))
    with contextlib.suppress(StopIteration):
        strict_1 = find(points, "strict", 1, gap=SPACED_GAP_S)
        cold_1 = find(points, "cold", 1, gap=SPACED_GAP_S)
        c = strict_1.p50_ms / cold_1.p50_ms
        out.append((f"strict p50 ≤ 1/5 of cold's at size 1, runs 2 s apart: "
                    f"{strict_1.p50_ms:.0f} / {cold_1.p50_ms:.0f} ms = 1/{1 / c:.1f}", c,
                    c <= 0.2))
    return out


def node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def prepared_waiter(repo_dir: str, node: str, workload: str,
                    sandbox: str) -> Callable[[], None]:
    """Waits until the pool prepared the workload's adaptors and, on Node ≥ 22, built a
    compile cache covering them for the default shim (what strict/context measure): for the
    sandbox's inner uid when the cell's pool runs in one."""
    repo = AdaptorRepo(repo_dir, offline=True)
    prepared = PreparedRepo(repo)
    wanted = [repo.resolve(spec) for spec in (ADAPTORS if workload == "mix" else (COMMON,))]
    shim = PreparedShim(repo)
    with_cache = node_major(node) >= COMPILE_CACHE_MIN_NODE

    def wait() -> None:
        deadline = time.monotonic() + PREPARE_WAIT_S
        while time.monotonic() < deadline:
            script = shim.script() or SHIM_SCRIPT
            cache = CompileCache(repo, shutil.which(node) or node, node_flags(RUN_MEMORY_MB),
                                 script, shim_uid(sandbox))
            if all(prepared.state(a) is not None for a in wanted) and shim.stamp() and (
                    not with_cache or cache.covers(prepared.prepared())):
                return
            time.sleep(0.5)
        raise BenchError(f"the pool did not prepare {', '.join(a.specifier for a in wanted)} "
                         f"within {PREPARE_WAIT_S:.0f} s")
    return wait


def run_cells(plan: list[Cell], repo_dir: str, log_dir: str, node: str) -> list[Measurement]:
    """Measure every cell against one dev server, with a progress bar on stderr."""
    points: list[Measurement] = []
    with DevServer(record_frames=False) as server, SlowHttpServer() as http, \
            tqdm(total=len(plan), unit="cell", file=sys.stderr, dynamic_ncols=True) as bar:
        for cell in plan:
            bar.set_postfix_str(f"{cell.isolation}@{cell.size} {cell.workload}")
            sandbox = resolve_mode(cell.sandbox or "auto")
            waiter = prepared_waiter(repo_dir, node, cell.workload, sandbox) \
                if cell.isolation in PREPARED_MODES else None
            with tqdm(unit="run", file=sys.stderr, leave=False, position=1,
                      dynamic_ncols=True) as runs:
                points.append(measure(server, cell, repo_dir, http.url, runs.update,
                                      extra=["--offline", "--node", node], log_dir=log_dir,
                                      prepared=waiter))
            bar.update()
    return points


def preparing_report(repo_dir: str, node: str) -> list[str]:
    """Prepared vs plain over the repo's adaptors, and the compile-cache hit rate seen from
    inside a strict shim (booted as the pool boots one)."""
    repo = AdaptorRepo(repo_dir, offline=True)
    prepared = PreparedRepo(repo)
    states: dict[str, list[str]] = {"prepared": [], "plain": [], "not tried": []}
    for package in sorted((repo.repo_dir / "node_modules" / "@openfn").glob("*_*")):
        name, _, version = package.name.rpartition("_")
        adaptor = Adaptor(f"@openfn/{name}@{version}", f"@openfn/{name}", version, str(package))
        state = prepared.state(adaptor) or "not tried"
        reason = (prepared.stamp(adaptor) or {}).get("reason") if state == "plain" else None
        states[state].append(f"{adaptor.specifier}" + (f" ({reason})" if reason else ""))
    lines = ["adaptors: " + "; ".join(f"{k} {len(v)}" + (f": {', '.join(v)}" if v else "")
                                      for k, v in states.items())]
    try:
        shim = measure_shim(node, repo_dir, RUN_MEMORY_MB)
        lines.append(shim.hit_line() + f"; that shim's CPU {shim.cpu_ms:.0f} ms")
    except Exception as exc:  # noqa: BLE001 - a report line, not a reason to lose the table
        lines.append(f"compile cache: could not measure ({exc})")
    return lines


def report(points: list[Measurement], extra: list[str] = ()) -> str:
    try:
        baselines = {p.workload: (find(points, "cold", 2, p.workload),
                                  find(points, "noop", 2, p.workload)) for p in points}
    except StopIteration:  # a subset without both baselines (--cells): no ratio columns
        baselines = {}
    lines = ["claim→complete and enqueue→claim (wait) are the dev server's times; runs/s with a "
             "backlog of 2 runs per executor; CPU per run; PSS/RSS = the pool's peak", "",
             table.measurements(points, baselines), "", "targets:"]
    lines += [f"  {'met    ' if met else 'NOT met'}  {text}" for text, _, met in targets(points)]
    return "\n".join([*lines, "", *extra])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-dir", default=os.environ.get("WORKER_REPO_DIR")
                        or str(Path.cwd() / ".repo"))
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of runs per cell (default 20)")
    parser.add_argument("--spaced-budget", type=float, default=24.0,
                        help="seconds of the 2-s-apart series (default 24: 12 runs)")
    parser.add_argument("--node", default=os.environ.get("WORKER_NODE_BINARY") or "node",
                        help="Node binary of the pools' shims (make bench: Node 24 when fetched)")
    parser.add_argument("--cells", default="",
                        help="measure only these cells, e.g. context@2,noop@2 or context@2:mix, "
                             "spaced for the 2-s-apart series (default: all)")
    args = parser.parse_args(argv)
    plan = cells(args.budget, args.spaced_budget)
    if args.cells:
        try:
            plan = select(plan, args.cells)
        except ValueError as exc:
            parser.error(str(exc))
    chart.pyplot()  # no matplotlib: fail now, not after ten minutes of measuring
    out = stem("bench")
    log_dir = str(out) + "-logs"
    os.makedirs(log_dir, exist_ok=True)
    try:
        points = run_cells(plan, args.repo_dir, log_dir, args.node)
    except (BenchError, PoolFailed) as exc:
        print(f"make bench: {exc}", file=sys.stderr)
        return 1
    extra = [f"node: {args.node} (v{node_major(args.node)})"]
    if any(p.isolation in PREPARED_MODES for p in points):
        extra += preparing_report(args.repo_dir, args.node)
    text = report(points, extra)
    print(text)
    print()
    print(sandbox_cost.report(resolve_mode("auto"), sandbox_cost.measure(
        resolve_mode("auto"), 15, sandbox_cost.node_path(), args.repo_dir)))
    write_json(out.with_suffix(".json"), {"cells": [p.to_dict() for p in points],
                                          "targets": [t[0] for t in targets(points)],
                                          "notes": extra})
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
