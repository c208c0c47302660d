"""``poolctl tune``'s recommendation on synthetic measurements: the cases an operator meets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pool.bench.config_file import render_config, write_config
from pool.bench.measurement import Measurement
from pool.bench.recommend import TuneError, recommend, saturation
from pool.settings import SettingsError, load_settings


def cell(iso: str, size: int, rps: float, p95: float, exec_mb: float = 100.0,
         sup_mb: float = 40.0, cpu_ms: float = 20.0) -> Measurement:
    """A cell where each executor (with its shims) uses ``exec_mb``."""
    return Measurement(isolation=iso, size=size, runs=100, runs_per_s=rps, p50_ms=p95 / 2,
                       p95_ms=p95, supervisor_cpu_ms=1.0, executors_cpu_ms=cpu_ms,
                       supervisor_pss_mb=sup_mb, executors_pss_mb=exec_mb * size,
                       pool_rss_mb=(exec_mb * size + sup_mb) * 1.5)


def cpu_bound(iso: str = "strict", base: float = 50.0) -> list[Measurement]:
    """2 cores: throughput doubles from 1 to 2, then stays flat while p95 climbs."""
    return [cell(iso, 1, base, 30), cell(iso, 2, base * 1.95, 35),
            cell(iso, 4, base * 2.0, 70), cell(iso, 8, base * 1.97, 140)]


def test_cpu_bound_pool_stops_at_the_core_count() -> None:
    rec = recommend(cpu_bound(), run_memory_mb=500, budget_mb=16_000, cores=2)
    assert (rec.size, rec.isolation) == (2, "strict")
    assert any("size 2 gives" in line for line in rec.lines)
    assert rec.lines[-1] == "recommended: --size 2 --isolation strict --run-memory 500"


def test_memory_bound_pool_is_capped_by_the_budget() -> None:
    # I/O-bound: throughput keeps growing to 8, but 8 executors × (100 + 500) MB do not fit 3 GB
    points = [cell("strict", s, 10.0 * s, 300) for s in (1, 2, 4, 8)]
    rec = recommend(points, run_memory_mb=500, budget_mb=3_000, cores=2)
    # (3000 − 40) / (100 + 500) = 4.9 → at most 4 executors
    assert rec.size == 4
    assert any("holds 4 executors" in line for line in rec.lines)
    assert any("do not fit the budget" in line for line in rec.lines)


def test_latency_saturated_sizes_are_not_chosen() -> None:
    # throughput still creeps up at 4, but p95 tripled: runs queue for CPU inside the pool
    points = [cell("strict", 1, 20, 100), cell("strict", 2, 30, 150),
              cell("strict", 4, 34, 320)]
    rec = recommend(points, run_memory_mb=256, budget_mb=16_000, cores=2)
    assert rec.size == 2
    assert any("size 4 is latency-saturated" in line for line in rec.lines)


def test_a_budget_below_one_executor_is_a_clear_error() -> None:
    with pytest.raises(TuneError, match=r"cannot hold even one executor: it needs 640 MB "
                                        r"\(supervisor 40 \+ executor 100 \+ 500 MB per run\)"):
        recommend(cpu_bound(), run_memory_mb=500, budget_mb=600, cores=2)


def test_throughput_alone_never_recommends_context() -> None:
    """An operator of a shared Lightning gets strict, with context's figures beside it."""
    rec = recommend(cpu_bound("context", 50) + cpu_bound("strict", 10), 500, 16_000, 2)
    assert rec.isolation == "strict" and not rec.trusted
    why = next(line for line in rec.lines if line.startswith("isolation:"))
    assert "context would give 97.5 runs/s at size 2 (5.0x strict's)" in why
    assert "no isolation between tenants" in why and "pass --trusted" in why
    assert rec.lines[-1] == "recommended: --size 2 --isolation strict --run-memory 500"


def test_trusted_jobs_get_context_only_when_strict_is_much_slower() -> None:
    far = recommend(cpu_bound("context", 50) + cpu_bound("strict", 10), 500, 16_000, 2,
                    trusted=True)
    assert far.isolation == "context" and far.trusted
    assert any("context, because the jobs are trusted (--trusted) and strict reaches only 20%"
               in line for line in far.lines)
    close = recommend(cpu_bound("context", 50) + cpu_bound("strict", 45), 500, 16_000, 2,
                      trusted=True)
    assert close.isolation == "strict"
    assert any("keep strict even for trusted jobs" in line for line in close.lines)


def test_context_alone_is_recommended_only_for_trusted_jobs() -> None:
    with pytest.raises(TuneError, match=r"only context fits; context would give 97.5 runs/s "
                                        r"at size 2, and context is no isolation between "
                                        r"tenants.*pass --trusted"):
        recommend(cpu_bound("context"), 500, 16_000, 2)
    rec = recommend(cpu_bound("context"), 500, 16_000, 2, trusted=True)
    assert rec.isolation == "context"
    assert any("the jobs are trusted (--trusted)" in line for line in rec.lines)


def test_failed_cells_are_not_recommended() -> None:
    broken = [Measurement(**{**c.to_dict(), "failures": 3}) for c in cpu_bound("strict")]
    with pytest.raises(TuneError, match="only context fits"):  # context is no way out...
        recommend(cpu_bound("context") + broken, 500, 16_000, 2)
    rec = recommend(cpu_bound("context") + broken, 500, 16_000, 2, trusted=True)
    assert rec.isolation == "context"  # ...unless the jobs are trusted
    with pytest.raises(TuneError, match="without failures"):
        recommend(broken, 500, 16_000, 2)


def test_saturation_says_when_to_stop_growing_the_pool() -> None:
    points = cpu_bound()
    assert saturation(points[:1], 16_000) is None
    assert saturation(points[:2], 16_000) is None
    assert "throughput saturated" in (saturation(points[:3], 16_000) or "")
    assert "memory saturated" in (saturation(points[:2], 200) or "")
    growing_but_slow = [cell("context", 1, 10, 100), cell("context", 2, 20, 350)]
    assert "latency saturated" in (saturation(growing_but_slow, 16_000) or "")


def test_written_config_is_what_poolctl_start_loads(tmp_path: Path) -> None:
    rec = recommend(cpu_bound(), run_memory_mb=300, budget_mb=16_000, cores=2)
    path = tmp_path / "pool.toml"
    write_config(path, rec.settings(), comments=rec.lines)
    settings = load_settings(env={}, config_path=path, command="start")
    assert (settings.size, settings.isolation, settings.run_memory_mb) == (2, "strict", 300)
    assert settings.source("size") == "file"
    # and a flag still wins over the file, as for a hand-written one
    assert load_settings({"size": 7}, env={}, config_path=path, command="start").size == 7


def test_config_text_escapes_strings_and_refuses_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "odd.toml"
    path.write_text(render_config({"worker_name": 'pod "a"\\b'}, comments=["why"]))
    assert load_settings(env={}, config_path=path, command="start").worker_name == 'pod "a"\\b'
    with pytest.raises(KeyError, match="not settings: sizes"):
        render_config({"sizes": 2})
    path.write_text("sizes = 2\n")
    with pytest.raises(SettingsError, match="unknown setting 'sizes'"):
        load_settings(env={}, config_path=path, command="start")
