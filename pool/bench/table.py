"""Plain-text tables of measurements, as ``make bench`` and ``poolctl tune`` print them."""

from __future__ import annotations

from collections.abc import Sequence

from pool.bench.measurement import Measurement

HEADER = ("cell", "runs", "fail", "runs/s", "p50 ms", "p95 ms", "p99 ms", "wait p50",
          "sup CPU ms/run", "exec CPU ms/run", "tree CPU ms/run", "boots/run", "PSS MB",
          "RSS MB")


def row(m: Measurement) -> list[str]:
    return [m.label, str(m.runs), str(m.failures), f"{m.runs_per_s:.1f}", f"{m.p50_ms:.0f}",
            f"{m.p95_ms:.0f}", f"{m.p99_ms:.0f}", f"{m.wait_p50_ms:.0f}",
            f"{m.supervisor_cpu_ms:.1f}", f"{m.executors_cpu_ms:.1f}", f"{m.tree_cpu_ms:.0f}",
            f"{m.shim_boots_per_run:.2f}", f"{m.pool_pss_mb:.0f}",
            f"{m.pool_rss_mb:.0f}"]


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned columns (the first left-aligned) under a rule."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def measurements(points: Sequence[Measurement],
                 baselines: dict[str, tuple[Measurement, Measurement]] | None = None) -> str:
    """The table; with ``baselines`` (workload → (cold, noop)) four ratio columns are added:
    throughput and p50 against ``cold``, p50 and supervisor+executor CPU against ``noop``."""
    if not baselines:
        return render(HEADER, [row(m) for m in points])
    header = (*HEADER, "runs/s ÷ cold", "cold p50 ÷ p50", "p50 ÷ noop")
    rows = []
    for m in points:
        cold, noop = baselines[m.workload]
        rows.append([*row(m), ratio(m.runs_per_s, cold.runs_per_s), ratio(cold.p50_ms, m.p50_ms),
                     ratio(m.p50_ms, noop.p50_ms)])
    return render(header, rows)
