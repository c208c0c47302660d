"""What the sandbox costs each shim, measured against no sandbox in the same run.

Two figures per mode, each the median of ``--shims`` starts, interleaved (none, sandboxed,
none, ...) so machine noise hits both alike:

- *start-up*: wall time from spawning a shim through the launcher to its ``ready`` message,
  and the CPU its whole process tree used by then — what strict pays per run, in the
  background while the previous run executes;
- *sandbox alone*: the same for ``/bin/true`` through the launcher (the exec chain and bwrap's
  namespace set-up, without Node's own start).

``python -m pool.bench.sandbox_cost`` prints the table; ``make bench`` prints it after the
end-to-end cells, whose ``strict`` and ``strict[none]`` rows give the CPU per run beside it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from pool.executor.environment import shim_env
from pool.executor.launcher import Launcher
from pool.executor.sandbox import SandboxConfig, resolve_mode
from pool.executor.shim import Shim


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it, reaped ones included."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in family:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _timed(action: Callable[[], float]) -> tuple[float, float]:
    """Wall ms of ``action`` and the CPU ms it reports having cost."""
    wall0 = time.perf_counter()
    cpu_s = action()
    return (time.perf_counter() - wall0) * 1000, cpu_s * 1000


def shim_start(launcher: Launcher, node: str, repo_dir: str, env: dict[str, str]) -> float:
    """Start a shim up to ``ready``; the CPU seconds its whole process tree used so far."""
    shim = Shim(node, 256, env, repo_dir, launcher=launcher)
    try:
        shim.start()
        shim.wait_ready(60)
        return _tree_cpu(shim.pid)
    finally:
        shim.kill()
        shim.close()


def bare_start(launcher: Launcher, repo_dir: str, env: dict[str, str]) -> float:
    """``/bin/true`` through the launcher, waited for: the CPU seconds of the whole chain."""
    cpu0 = _children_cpu()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        process = launcher.spawn(["/bin/true"], env, [], repo_dir, [(null, 0), (null, 1),
                                                                     (null, 2)])
    finally:
        os.close(null)
    os.waitpid(process.pid, 0)
    process.wait_gone()
    launcher.release(process)
    return _children_cpu() - cpu0


def measure(mode: str, shims: int, node: str, repo_dir: str) -> dict[str, dict[str, float]]:
    """Medians of wall and CPU ms for ``none`` and ``mode``: {kind: {"<mode> wall": ...}}."""
    home = tempfile.mkdtemp(prefix="poolctl-bench-home-")
    env = shim_env(os.environ, (), home)
    uids = (880000, 880001) if mode == "uid" else ()
    launchers = {"none": Launcher(SandboxConfig(), home),
                 mode: Launcher(SandboxConfig(mode=mode, uids=uids), home)}
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(shims):
            for name, launcher in launchers.items():
                samples.setdefault(("shim", name), []).append(
                    _timed(lambda launcher=launcher: shim_start(launcher, node, repo_dir, env)))
                samples.setdefault(("bare", name), []).append(
                    _timed(lambda launcher=launcher: bare_start(launcher, repo_dir, env)))
    finally:
        for launcher in launchers.values():
            launcher.close()
        shutil.rmtree(home, ignore_errors=True)
    out: dict[str, dict[str, float]] = {}
    for (kind, name), values in samples.items():
        out.setdefault(kind, {})[f"{name} wall"] = statistics.median(v[0] for v in values)
        out[kind][f"{name} cpu"] = statistics.median(v[1] for v in values)
    return out


def report(mode: str, figures: dict[str, dict[str, float]]) -> str:
    lines = [f"sandbox start-up per shim ({mode} vs none, medians, ms):",
             f"  {'':<26}{'none':>14}{mode:>14}{'added':>10}"]
    for kind, label in (("shim", "shim spawn → ready"), ("bare", "/bin/true (sandbox only)")):
        f = figures[kind]
        for what in ("wall", "cpu"):
            a, b = f[f"none {what}"], f[f"{mode} {what}"]
            lines.append(f"  {label + ' ' + what:<26}{a:>14.1f}{b:>14.1f}{b - a:>10.1f}")
    return "\n".join(lines)


def node_path(node: str = "node") -> str:
    found = shutil.which(node)
    if found is None:
        raise SystemExit(f"node not found: {node}")
    return os.path.realpath(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shims", type=int, default=15, help="starts per mode (default 15)")
    parser.add_argument("--node", default="node")
    parser.add_argument("--repo-dir", default=os.environ.get("WORKER_REPO_DIR")
                        or str(Path.cwd() / ".repo"))
    args = parser.parse_args(argv)
    mode = resolve_mode("auto")
    print(report(mode, measure(mode, args.shims, node_path(args.node), args.repo_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
