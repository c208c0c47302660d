"""PNG charts of throughput and p95 against pool size (matplotlib, headless Agg backend).

matplotlib is an optional extra (``pip install 'poolctl[bench]'``); without it, asking for a
chart is one clear error, raised before any measuring starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pool.bench.measurement import Measurement


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed), or ``ChartUnavailable``."""
    try:
        import matplotlib
    except ImportError:
        raise ChartUnavailable("drawing a chart needs matplotlib: pip install "
                               "'poolctl[bench]' (or matplotlib>=3.8)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(points: Sequence[Measurement], path: str | os.PathLike[str], title: str) -> None:
    """One row of two panels per workload: runs/s by size, and p50/p95 by size, one line per
    isolation mode (gap series are left out: their throughput is the arrival rate)."""
    plt = pyplot()
    measured = [p for p in points if not p.gap_s]
    workloads = list(dict.fromkeys(p.workload for p in measured))
    fig, axes = plt.subplots(len(workloads), 2, figsize=(11, 4 * len(workloads)),
                             squeeze=False)
    for (ax_rate, ax_lat), workload in zip(axes, workloads, strict=True):
        group = [p for p in measured if p.workload == workload]
        for iso in dict.fromkeys(p.isolation for p in group):
            line = sorted((p for p in group if p.isolation == iso), key=lambda p: p.size)
            sizes = [p.size for p in line]
            ax_rate.plot(sizes, [p.runs_per_s for p in line], marker="o", label=iso)
            drawn = ax_lat.plot(sizes, [p.p95_ms for p in line], marker="o", label=f"{iso} p95")
            ax_lat.plot(sizes, [p.p50_ms for p in line], marker=".", linestyle=":",
                        color=drawn[0].get_color(), label=f"{iso} p50")
        ax_rate.set(title=f"{workload}: throughput", xlabel="pool size (executors)",
                    ylabel="runs/s")
        ax_lat.set(title=f"{workload}: claim→complete latency", xlabel="pool size (executors)",
                   ylabel="ms", yscale="log")
        for ax in (ax_rate, ax_lat):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
            ax.set_xticks(sorted({p.size for p in group}))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
