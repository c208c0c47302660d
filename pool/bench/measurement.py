"""What one benchmark cell measured, as plain numbers: the unit ``bench``, ``tune`` and the
recommendation logic share (and what ``bench/results/*.json`` holds).

Kept free of process and socket code so the recommendation can be tested on synthetic
figures, and so a results file can be read back into the same shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty list; NaN for an empty one."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Measurement:
    """One cell: an isolation mode at a pool size, under one workload and arrival pattern.

    Latencies are the dev server's own timestamps (what Lightning would see): claim→complete
    is the run's time in the worker, enqueue→claim the wait before a worker took it. CPU is
    per run, split between the supervisor process and everything under it (executors, shims,
    reaped shims). Memory is the pool's total over the same process tree, sampled while runs
    execute (the peak of the samples), PSS counting shared pages once.
    """

    isolation: str
    size: int
    workload: str = "trivial"
    gap_s: float = 0.0            # runs arrive this far apart; 0 = as fast as the pool takes them
    runs: int = 0
    failures: int = 0             # runs whose final state is not success
    wall_s: float = 0.0
    runs_per_s: float = 0.0
    p50_ms: float = 0.0           # claim → complete
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    wait_p50_ms: float = 0.0      # enqueue → claim
    wait_p95_ms: float = 0.0
    supervisor_cpu_ms: float = 0.0   # per run
    executors_cpu_ms: float = 0.0    # per run: executors + shims
    supervisor_pss_mb: float = 0.0
    executors_pss_mb: float = 0.0    # every executor and shim together
    pool_rss_mb: float = 0.0
    shim_boots_per_run: float = 0.0  # shims started per run over a window that begins and
                                     # ends with the same live shims (NaN: never steady)

    @property
    def tree_cpu_ms(self) -> float:
        """CPU per run of the whole pool: supervisor, executors, shims (reaped ones too)."""
        return self.supervisor_cpu_ms + self.executors_cpu_ms

    @property
    def pool_pss_mb(self) -> float:
        return self.supervisor_pss_mb + self.executors_pss_mb

    @property
    def label(self) -> str:
        gap = f", {self.gap_s:g} s apart" if self.gap_s else ""
        return f"{self.isolation}@{self.size} {self.workload}{gap}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
