"""How large the pool may grow: memory decides, CPU only warns.

Every executor costs memory whether or not it runs anything: its Python process (~20 MB) and
its warm Node shim (~100 MB RSS with @openfn/runtime loaded; two in ``strict`` mode, where a
standby boots while a run executes). A size the machine cannot hold does not fail cleanly: the
pool spawns executors until the kernel's OOM killer starts choosing, so a size above what
memory allows is refused, at start (exit 2) and on ``poolctl scale``.

The memory is the cgroup's ``memory.max`` where one is set (a container's limit, which is what
the OOM killer enforces, not the host's figure), else the host's total. ``--max-size`` /
``WORKER_MAX_POOL_SIZE`` overrides the estimate either way. More executors than CPUs is normal
(runs mostly wait on I/O), so CPU only warns, from four executors per CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
EXECUTOR_MB = 20  # the executor's own Python process
SHIM_MB = 100  # a warm shim: Node with the runtime and the compiler loaded
EXECUTORS_PER_CPU_WARNING = 4
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED_V1 = 1 << 60  # cgroup v1 reports "no limit" as a huge number


@dataclass(frozen=True)
class MaxSize:
    """The largest pool size accepted, and where that figure comes from (shown in errors)."""

    size: int
    why: str


def footprint_mb(isolation: str) -> int:
    """Memory one executor holds while idle, in MB, for an isolation mode."""
    shims = {"strict": 2, "noop": 0}.get(isolation, 1)
    return EXECUTOR_MB + shims * SHIM_MB


def cgroup_memory_limit(root: Path = CGROUP_ROOT,
                        membership: str | None = None) -> tuple[int, str] | None:
    """``(bytes, file)``: the smallest ``memory.max`` (v2) or ``memory.limit_in_bytes`` (v1)
    set on this process's cgroup (``membership``: /proc/self/cgroup's text) or its
    ancestors; None when none is set."""
    found: list[tuple[int, str]] = []
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            membership = ""
    for line in membership.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        here = base / path.lstrip("/")
        while True:
            limit = _read_limit(here / name)
            if limit is not None:
                found.append((limit, str(here / name)))
            if here == base or base not in here.parents:
                break
            here = here.parent
    return min(found) if found else None


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= UNLIMITED_V1:
        return None  # "max", or v1's "no limit"
    return int(text)


def host_memory() -> int:
    """Total memory of the host, in bytes (/proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def default_max_size(isolation: str) -> MaxSize:
    """Memory (the cgroup's limit where set, else the host's) over one executor's footprint."""
    cgroup = cgroup_memory_limit()
    if cgroup is not None:
        memory, source = cgroup[0], f"cgroup limit {cgroup[1]}"
    else:
        memory, source = host_memory(), "host memory"
    each = footprint_mb(isolation)
    size = max(1, memory // (each * MB))
    return MaxSize(size, f"{memory / (1024 * MB):.1f} GiB of {source} / ~{each} MB per "
                         f"executor in {isolation} mode")


def cpu_count() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 ``cpu.max`` quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = (CGROUP_ROOT / "cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def cpu_warning(size: int) -> str | None:
    """A warning when ``size`` executors would share few CPUs, else None."""
    cpus = cpu_count()
    if size > EXECUTORS_PER_CPU_WARNING * cpus:
        return (f"size {size} is more than {EXECUTORS_PER_CPU_WARNING} executors per CPU "
                f"({cpus} CPUs): runs that compute will be slowed by each other")
    return None
