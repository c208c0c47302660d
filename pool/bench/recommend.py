"""``poolctl tune``'s judgement, as pure functions over measurements.

Given what each (isolation, size) cell measured on this machine, the per-run memory limit the
operator will enforce and the memory the pool may use, pick ``--size`` and ``--isolation``
and say why in plain lines. No processes here: the tests feed synthetic figures.

The rules, each stated in the reasoning it prints:

* **Memory is a hard cap.** Every executor may hold a run that grows to ``run_memory_mb`` on
  top of its measured footprint, all at once, so
  ``size ≤ (budget − supervisor) / (footprint per executor + run memory)``.
* **Throughput must earn its memory.** The smallest size that gets within
  ``THROUGHPUT_GAIN`` of the best throughput wins; larger sizes only cost memory.
* **Latency must hold.** A size whose claim→complete p95 is over ``LATENCY_FACTOR`` × the
  best p95 is saturated (runs queue for CPU inside the pool) and is not chosen.
* **strict, unless the jobs are trusted.** ``strict`` (a fresh shim per run, in the sandbox)
  is what an operator of a shared Lightning needs: tenants' jobs are hostile to each other as
  far as the worker knows, and ``context`` reuses one shim for run after run, so a job that
  escapes its ``vm`` reaches the runs after it. Throughput alone never picks ``context``: it is
  shown beside ``strict``, and recommended only when the operator says every job is trusted
  (``--trusted``) *and* ``strict`` delivers less than ``STRICT_SHARE`` of its throughput — each
  line says which of these decided.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from pool.bench.measurement import Measurement

THROUGHPUT_GAIN = 0.10   # a bigger pool must add ≥ 10 % runs/s to be worth its memory
LATENCY_FACTOR = 3.0     # p95 over 3× the best p95 = runs wait for CPU inside the pool
STRICT_SHARE = 0.80      # trusted jobs: keep strict if it reaches 80 % of context's throughput
ISOLATION_PREFERENCE = ("strict", "context", "cold")  # safest first; noop runs no jobs


class TuneError(Exception):
    """No pool fits: the message says which limit and what to change."""


@dataclass(frozen=True)
class Choice:
    """The best size of one isolation mode, with the figures that decided it."""

    isolation: str
    size: int
    memory_cap: int                 # most executors the budget holds
    per_executor_mb: float          # measured footprint of one executor (+ its shims)
    point: Measurement | None       # the measured cell chosen (None: cap below every size)
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendation:
    """What to run: ``settings()`` goes into the config file; ``lines`` explain it."""

    size: int
    isolation: str
    run_memory_mb: int
    lines: list[str] = field(default_factory=list)
    trusted: bool = False  # --trusted: the operator said every job is trusted

    def settings(self) -> dict[str, int | str]:
        return {"size": self.size, "isolation": self.isolation,
                "run_memory_mb": self.run_memory_mb}


def by_isolation(points: Iterable[Measurement]) -> dict[str, list[Measurement]]:
    """Group cells by isolation mode, each list sorted by size."""
    groups: dict[str, list[Measurement]] = {}
    for point in points:
        groups.setdefault(point.isolation, []).append(point)
    return {iso: sorted(group, key=lambda p: p.size) for iso, group in groups.items()}


def saturation(points: list[Measurement], budget_mb: float) -> str | None:
    """Why measuring one size more of this isolation is pointless, or None to go on.

    ``points`` are one isolation's cells so far, by size; only the newest one is judged
    against the ones before it.
    """
    if not points:
        return None
    last = points[-1]
    if last.pool_pss_mb > budget_mb:
        return (f"memory saturated: the pool used {last.pool_pss_mb:.0f} MB at size "
                f"{last.size}, over the {budget_mb:.0f} MB budget")
    if len(points) >= 2:
        prev = points[-2]
        if last.runs_per_s < prev.runs_per_s * (1 + THROUGHPUT_GAIN):
            return (f"throughput saturated: {last.runs_per_s:.1f} runs/s at size {last.size} vs "
                    f"{prev.runs_per_s:.1f} at size {prev.size}")
    best_p95 = min(p.p95_ms for p in points)
    if last.p95_ms > LATENCY_FACTOR * best_p95:
        return (f"latency saturated: p95 {last.p95_ms:.0f} ms at size {last.size} is over "
                f"{LATENCY_FACTOR:g}x the best ({best_p95:.0f} ms)")
    return None


def memory_cap(points: list[Measurement], run_memory_mb: int, budget_mb: float
               ) -> tuple[int, float, float]:
    """(most executors the budget holds, footprint per executor MB, supervisor MB)."""
    per_executor = max(p.executors_pss_mb / p.size for p in points)
    supervisor = max(p.supervisor_pss_mb for p in points)
    cap = math.floor((budget_mb - supervisor) / (per_executor + run_memory_mb))
    return max(cap, 0), per_executor, supervisor


def choose_size(points: list[Measurement], run_memory_mb: int, budget_mb: float) -> Choice:
    """The best size for one isolation mode (``points`` sorted by size, all succeeded)."""
    iso = points[0].isolation
    cap, per_executor, supervisor = memory_cap(points, run_memory_mb, budget_mb)
    lines = [f"{iso}: one executor uses {per_executor:.0f} MB, the supervisor "
             f"{supervisor:.0f} MB; with {run_memory_mb} MB per run the budget of "
             f"{budget_mb:.0f} MB holds {cap} executor{'s' if cap != 1 else ''}"]
    if cap < 1:
        return Choice(iso, 0, cap, per_executor, None, tuple(lines))
    fitting = [p for p in points if p.size <= cap]
    if not fitting:
        lines.append(f"{iso}: memory allows only size {cap}, below every measured size")
        return Choice(iso, cap, cap, per_executor, None, tuple(lines))
    best_p95 = min(p.p95_ms for p in fitting)
    healthy = [p for p in fitting if p.p95_ms <= LATENCY_FACTOR * best_p95]
    for p in fitting:
        if p not in healthy:
            lines.append(f"{iso}: size {p.size} is latency-saturated (p95 {p.p95_ms:.0f} ms > "
                         f"{LATENCY_FACTOR:g}x {best_p95:.0f} ms)")
    top = max(p.runs_per_s for p in healthy)
    chosen = next(p for p in healthy if p.runs_per_s >= (1 - THROUGHPUT_GAIN) * top)
    lines.append(f"{iso}: size {chosen.size} gives {chosen.runs_per_s:.1f} runs/s, within "
                 f"{THROUGHPUT_GAIN:.0%} of the best measured ({top:.1f}); p95 "
                 f"{chosen.p95_ms:.0f} ms")
    bigger = [p for p in points if p.size > chosen.size]
    if chosen is healthy[-1] and not bigger and cap > chosen.size:
        lines.append(f"{iso}: throughput was still growing at size {chosen.size} and memory "
                     f"allows {cap}: measure larger sizes (--max-size) to go further")
    elif any(p.size > cap for p in points):
        lines.append(f"{iso}: sizes above {cap} were measured but do not fit the budget")
    return Choice(iso, chosen.size, cap, per_executor, chosen, tuple(lines))


def recommend(points: Iterable[Measurement], run_memory_mb: int, budget_mb: float,
              cores: int, trusted: bool = False) -> Recommendation:
    """Pick ``--size`` and ``--isolation``; ``TuneError`` when no executor fits the budget, or
    when only ``context`` would and the jobs are not said to be trusted."""
    groups = by_isolation(p for p in points if p.failures == 0 and p.runs > 0)
    candidates = [iso for iso in ISOLATION_PREFERENCE if iso in groups]
    if not candidates:
        raise TuneError("no isolation mode completed its runs without failures: nothing to "
                        "recommend (see the table for failures)")
    choices = {iso: choose_size(groups[iso], run_memory_mb, budget_mb) for iso in candidates}
    lines = [line for choice in choices.values() for line in choice.lines]
    fitting = {iso: c for iso, c in choices.items() if c.size >= 1}
    if not fitting:
        smallest = min(c.per_executor_mb for c in choices.values())
        supervisor = max(p.supervisor_pss_mb for g in groups.values() for p in g)
        need = supervisor + smallest + run_memory_mb
        raise TuneError(
            f"the memory budget of {budget_mb:.0f} MB cannot hold even one executor: it needs "
            f"{need:.0f} MB (supervisor {supervisor:.0f} + executor {smallest:.0f} + "
            f"{run_memory_mb} MB per run); raise --memory-budget or lower --run-memory-mb")
    chosen = pick_isolation(fitting, lines, trusted)
    if chosen.point is not None:
        cpu_s = (chosen.point.supervisor_cpu_ms + chosen.point.executors_cpu_ms) / 1000
        busy = chosen.point.runs_per_s * cpu_s
        lines.append(f"CPU: at {chosen.point.runs_per_s:.1f} runs/s the pool keeps "
                     f"{busy:.1f} of {cores} cores busy ({cpu_s * 1000:.0f} ms CPU per run)")
    lines.append(f"recommended: --size {chosen.size} --isolation {chosen.isolation} "
                 f"--run-memory {run_memory_mb}")
    return Recommendation(chosen.size, chosen.isolation, run_memory_mb, lines, trusted)


def pick_isolation(fitting: dict[str, Choice], lines: list[str], trusted: bool) -> Choice:
    """strict, with context's figures beside it; context only for trusted jobs that strict
    would slow down a lot. Appends the reason to ``lines``."""
    strict, context = fitting.get("strict"), fitting.get("context")
    if context is not None and not trusted:
        beside = _beside(strict, context)
        if strict is None:
            raise TuneError(
                f"only context fits{beside}, and context is no isolation between tenants: a job "
                "that escapes its vm reaches every later run in its shim. Measure strict (the "
                "default; raise --memory-budget if it did not fit), or pass --trusted if every "
                "job on this Lightning is trusted")
        lines.append(f"isolation: strict, the mode for a shared Lightning (a fresh shim per "
                     f"run: nothing of one tenant's run reaches the next){beside}; context "
                     f"gives no isolation between tenants — pass --trusted only if every job "
                     f"is trusted")
        return strict
    if strict and context and strict.point and context.point:
        share = strict.point.runs_per_s / context.point.runs_per_s
        if share >= STRICT_SHARE:
            lines.append(f"isolation: strict reaches {share:.0%} of context's throughput: keep "
                         f"strict even for trusted jobs (no state of one run reaches the next)")
            return strict
        lines.append(f"isolation: context, because the jobs are trusted (--trusted) and strict "
                     f"reaches only {share:.0%} of context's throughput; context shares a "
                     f"shim between runs: adaptor dependencies and process-level changes can "
                     f"leak from one run to the next, so it is no isolation between tenants")
        return context
    chosen = fitting[next(iso for iso in ISOLATION_PREFERENCE if iso in fitting)]
    lines.append(f"isolation: {chosen.isolation} (the only mode measured that fits)"
                 + (" — the jobs are trusted (--trusted)" if chosen.isolation == "context"
                    else ""))
    return chosen


def _beside(strict: Choice | None, context: Choice) -> str:
    """What context would give, said next to strict's figures."""
    if context.point is None:
        return ""
    text = (f"; context would give {context.point.runs_per_s:.1f} runs/s at size "
            f"{context.size}")
    if strict is not None and strict.point is not None and strict.point.runs_per_s > 0:
        text += f" ({context.point.runs_per_s / strict.point.runs_per_s:.1f}x strict's)"
    return text
