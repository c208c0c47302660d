"""``poolctl tune``: measure this machine and recommend ``--size`` and ``--isolation``.

Starts an embedded dev server (and the mix's 50 ms HTTP server), then for each isolation
mode (``strict``, then ``context`` beside it, or the one ``--isolation`` names; ``context`` is
recommended only with ``--trusted``) runs the built-in mix — or
the operator's own ``--workflow`` run files — through a real ``poolctl start`` at sizes 1, 2,
4, 8, ... until throughput stops growing, p95 latency or memory saturates, or the budget would
not hold the next size. The judgement is ``pool.bench.recommend``'s; this module only drives
the measuring and prints one screen.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import click
import psutil

from pool.bench import chart, table
from pool.bench.config_file import write_config
from pool.bench.measure import BenchError, Cell, measure
from pool.bench.measurement import Measurement
from pool.bench.pool_process import PoolFailed
from pool.bench.progress import cell_bar, run_bar
from pool.bench.recommend import TuneError, memory_cap, recommend, saturation
from pool.bench.workloads import RunFileError, RunSpec, SlowHttpServer, load_run_file
from pool.devserver.server import DevServer
from pool.settings import Settings, rows_for

# strict is the mode tuned for; context is measured beside it (cold is never faster, noop runs
# no jobs)
TUNED = ("strict", "context")
# settings passed on to every measured pool when the operator set them (size and isolation
# are the tuned ones)
PASSED_ON = tuple(row for row in rows_for("tune") if row.name not in ("isolation", "repo_dir"))


@dataclass(frozen=True)
class TuneOptions:
    workflows: tuple[str, ...] = ()
    run_memory_mb: int | None = None      # None: the run_memory_mb setting
    memory_budget_mb: float | None = None  # None: 80 % of RAM
    max_size: int | None = None            # None: 4 × cores
    budget_s: float = 20.0                 # seconds of runs per cell
    quick: bool = False                    # sizes 1 and 2, 4 s per cell: a smoke test
    write: str | None = None
    plot: str | None = None
    trusted: bool = False                  # every job is trusted: context may be recommended


def pool_flags(settings: Settings, run_memory_mb: int) -> list[str]:
    """The operator's own settings, as flags for each measured ``poolctl start``."""
    flags = ["--run-memory", str(run_memory_mb)]
    for row in PASSED_ON:
        if row.name == "run_memory_mb" or settings.is_default(row.name):
            continue
        value = settings.values[row.name]
        if isinstance(value, bool):
            flags.append(row.flag if value else f"--no-{row.flag.lstrip('-')}")
        elif isinstance(value, list):
            flags += [row.flag, ",".join(value)]
        elif value is not None:
            flags += [row.flag, str(value)]
    return flags


def sizes(max_size: int) -> list[int]:
    out, size = [], 1
    while size <= max_size:
        out.append(size)
        size *= 2
    if out[-1] != max_size:
        out.append(max_size)
    return out


def measure_all(settings: Settings, opts: TuneOptions, own: Sequence[RunSpec],
                run_memory_mb: int, budget_mb: float) -> tuple[list[Measurement], list[str]]:
    """Every cell tune measures, and why it stopped growing each isolation mode."""
    isolations = TUNED if settings.is_default("isolation") else (settings.isolation,)
    max_size = 2 if opts.quick else (opts.max_size or 4 * (os.cpu_count() or 1))
    budget_s = 4.0 if opts.quick else opts.budget_s
    flags = pool_flags(settings, run_memory_mb)
    points: list[Measurement] = []
    stops: list[str] = []
    log_dir = tempfile.mkdtemp(prefix="poolctl-tune-")
    plan = sizes(max_size)
    workload = "own" if own else "mix"
    with DevServer(record_frames=False) as server, SlowHttpServer() as http, \
            cell_bar(len(isolations) * len(plan), "tune") as bar:
        for iso in isolations:
            mine: list[Measurement] = []
            for size in plan:
                if mine and memory_cap(mine, run_memory_mb, budget_mb)[0] < size:
                    stops.append(f"{iso}: stopped before size {size}: the memory budget "
                                 f"would not hold it")
                    break
                bar.set_postfix_str(f"{iso}@{size}")
                cell = Cell(iso, size, workload, runs=100_000, budget_s=budget_s)
                with run_bar("tune") as runs:
                    mine.append(measure(server, cell, settings.repo_dir, http.url, runs.update,
                                        extra=flags, log_dir=log_dir, own=own))
                bar.update()
                why = saturation(mine, budget_mb)
                if why:
                    stops.append(f"{iso}: stopped at size {size}: {why}")
                    break
            else:
                stops.append(f"{iso}: measured up to --max-size {max_size}")
            points += mine
            bar.update(len(plan) - len(mine))
    return points, stops


def tune(settings: Settings, opts: TuneOptions) -> int:
    """The command: measure, print the table and the reasoning, write/plot on request."""
    if opts.plot:
        chart.pyplot()  # fails now with one clear line if matplotlib is missing
    own = [load_run_file(path) for path in opts.workflows]
    run_memory_mb = opts.run_memory_mb or settings.run_memory_mb
    ram_mb = psutil.virtual_memory().total / 2**20
    budget_mb = opts.memory_budget_mb or 0.8 * ram_mb
    cores = os.cpu_count() or 1
    points, stops = measure_all(settings, opts, own, run_memory_mb, budget_mb)
    what = ", ".join(s.name for s in own) if own else "the built-in mix (http get 50 ms, " \
        "two steps, 1 MB dataclip, 100 log lines)"
    click.echo(f"poolctl tune on {cores} cores, {ram_mb:.0f} MB RAM: {what}; memory budget "
               f"{budget_mb:.0f} MB, {run_memory_mb} MB per run\n")
    click.echo(table.measurements(points) + "\n")
    for line in stops:
        click.echo(line)
    if opts.plot:
        chart.draw(points, opts.plot, f"poolctl tune ({cores} cores)")
        click.echo(f"chart: {opts.plot}")
    try:
        rec = recommend(points, run_memory_mb, budget_mb, cores, trusted=opts.trusted)
    except TuneError as exc:
        click.echo(f"no recommendation: {exc}", err=True)
        return 1
    for line in rec.lines:
        click.echo(line)
    if opts.write:
        write_config(opts.write, rec.settings(),
                     comments=["written by poolctl tune; use: poolctl start --config " + opts.write,
                               *rec.lines])
        click.echo(f"wrote {opts.write}: poolctl start --config {opts.write}")
    return 0


def tune_command(settings: Settings, opts: TuneOptions) -> int:
    """``tune`` with every expected failure as one line and exit code 1 (2: bad input)."""
    try:
        return tune(settings, opts)
    except (chart.ChartUnavailable, RunFileError) as exc:
        click.echo(f"poolctl tune: {exc}", err=True)
        return 2
    except (BenchError, PoolFailed) as exc:
        click.echo(f"poolctl tune: measuring failed: {exc}", err=True)
        return 1
