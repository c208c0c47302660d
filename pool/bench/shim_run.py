"""One strict run seen from inside its shim: Node's compile-cache hit rate, and where the CPU goes.

``python -m pool.bench.shim_run [--node N] [--plain] [--profile DIR]`` boots one shim exactly
as a ``strict`` executor's factory does (same binary, flags, environment, repo, prepared forms
and compile cache — ``--plain`` for neither), warms language-common as the standby does, runs
the trivial job, and prints:

- the compile-cache hit rate, from Node's own account (``NODE_DEBUG_NATIVE=COMPILE_CACHE``:
  each module whose V8 code cache was accepted, rejected, or not there);
- with ``--profile``, a CPU profile of that shim (``--cpu-prof``) summed by where the code
  lives: Node's module loader, the runtime, the job compiler, the adaptor, GC, the rest;
- the boot → ready → warmed → run-complete wall times and the shim's CPU.

``make bench`` prints the hit rate line with its table.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pool.adaptors import AdaptorRepo
from pool.bench.workloads import COMMON
from pool.executor.environment import shim_env
from pool.executor.handle import ExecutorHandle
from pool.executor.isolation import ShimFactory, adaptor_dict
from pool.executor.launcher import Launcher
from pool.executor.sandbox import SandboxConfig, base_config, choose
from pool.executor.shim import Shim
from pool.settings import load_settings

CACHE_LINE = re.compile(r"V8 code cache for \S+ (\S+) was (accepted|rejected|not initialized)")
JOB = "fn(state => ({ ...state, data: { ok: true } }))"


@dataclass
class ShimRun:
    """What one shim's boot, warm-up and trivial run showed."""

    accepted: int = 0
    rejected: int = 0
    missing: int = 0
    times_ms: dict[str, float] = field(default_factory=dict)
    cpu_ms: float = 0.0
    phases_ms: dict[str, float] = field(default_factory=dict)  # CPU per step of the shim's life
    reason: str = ""
    profile: dict[str, float] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        total = self.accepted + self.rejected + self.missing
        return self.accepted / total if total else 0.0

    def hit_line(self) -> str:
        total = self.accepted + self.rejected + self.missing
        return (f"compile cache, from inside a strict shim: {self.accepted}/{total} modules hit "
                f"({self.hit_rate:.0%}); {self.rejected} rejected, {self.missing} not cached")


class ProfiledShim(Shim):
    """A shim started with ``--cpu-prof`` (the profile is written when it exits normally)."""

    profile_dir = ""

    def argv(self) -> list[str]:
        argv = super().argv()
        return [argv[0], "--cpu-prof", f"--cpu-prof-dir={self.profile_dir}", *argv[1:]]


def _collect(shim: Shim, out: ShimRun, until: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        event = shim.next_event(max(0.1, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise RuntimeError(f"the shim did not send {until} within {timeout:g} s")
        if event is None:
            continue
        if event["type"] == "output":
            _count(event["line"], out)
        elif event["type"] == until:
            return event


def _count(line: str, out: ShimRun) -> None:
    m = CACHE_LINE.search(line)
    if not m:
        return
    kind = m.group(2)
    if kind == "accepted":
        out.accepted += 1
    elif kind == "rejected":
        out.rejected += 1
        out.missed.append(m.group(1))
    else:
        out.missing += 1
        out.missed.append(m.group(1))


def default_sandbox(node: str, repo_dir: str) -> SandboxConfig:
    """The sandbox a strict pool started here with default settings would use (its first
    slot's uids in uid mode)."""
    settings = load_settings(command="execute")
    config, _ = choose(settings.sandbox, "strict", node, repo_dir, base_config(settings))
    return config


def measure_shim(node: str, repo_dir: str, memory_mb: int = 500, plain: bool = False,
                 profile_dir: str | None = None, wait_s: float = 120,
                 sandbox: SandboxConfig | None = None) -> ShimRun:
    """Boot, warm and run one trivial job in a shim made the way a strict executor makes it,
    in ``sandbox`` (default: the one a pool started here would use).

    Unless ``plain``, first waits (up to ``wait_s``) for the pool's background work to cover
    language-common: its prepared form and the compile cache."""
    repo = AdaptorRepo(repo_dir, offline=True)
    home = tempfile.mkdtemp(prefix="poolctl-shimrun-")
    os.chmod(home, 0o755)  # the sandbox binds things from it as a slot uid
    base_env = shim_env(os.environ, [], home)
    launcher = Launcher(sandbox or default_sandbox(node, repo_dir), home)
    factory = ShimFactory(node, repo_dir, base_env, repo, 60, (), prepare=not plain,
                          memory_mb=memory_mb, launcher=launcher)
    adaptor = repo.resolve(COMMON)
    extra: dict[str, str] = {}
    script = None
    if factory.forms is not None:
        forms = factory.forms
        factory.boot(memory_mb, []).discard()  # learns the Node version, as an executor does
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            form = forms.form(adaptor)
            script = forms.script()
            extra = forms.shim_env(memory_mb, script)
            if form.path != adaptor.path and forms.shim.stamp() is not None and (
                    extra or forms.node_major < 22):
                break
            forms.preparer.wait_idle(1.0)
        adaptor = forms.form(adaptor)
    out = ShimRun()
    shim_class = ProfiledShim if profile_dir else Shim
    if profile_dir:
        ProfiledShim.profile_dir = profile_dir
    env = {**base_env, **extra, "NODE_DEBUG_NATIVE": "COMPILE_CACHE"}
    shim = shim_class(node, memory_mb, env, repo_dir, script, launcher,
                      writable=(profile_dir,) if profile_dir else ())
    t0 = time.perf_counter()
    shim.start()
    try:
        ready = _collect(shim, out, "ready")
        out.times_ms["ready"] = (time.perf_counter() - t0) * 1000
        boot = ready.get("boot_cpu_ms") or {}
        for key, label in (("node", "Node bootstrap + shim.mjs"), ("runtime", "@openfn/runtime"),
                           ("compiler", "job compiler"), ("shim", "shim modules"),
                           ("esm_hook", "ESM hook")):
            out.phases_ms[label] = float(boot.get(key, 0))
        at_ready = _cpu_ms(_node_pid(shim))
        reply = shim.warm([adaptor_dict(adaptor)], 120)
        for line in reply.get("output") or []:
            _count(line, out)
        out.times_ms["warmed"] = (time.perf_counter() - t0) * 1000
        at_warm = _cpu_ms(_node_pid(shim))
        out.phases_ms["adaptor import (standby warm-up)"] = at_warm - at_ready
        run_id = str(uuid.uuid4())
        shim.start_run({
            "run_id": run_id, "input": {"data": {}},
            "plan": {"id": run_id, "options": {}, "workflow": {"steps": [
                {"id": "a", "name": "a", "expression": JOB, "adaptors": [COMMON],
                 "configuration": {}}]}},
            "adaptors": {COMMON: {k: v for k, v in adaptor_dict(adaptor).items()
                                  if k != "specifier"}},
            "options": {"state_props_to_remove": ["configuration", "response"],
                        "payload_limit_mb": 10, "log_payload_limit_mb": 1, "cache_key": None},
        })
        done = _collect(shim, out, "run-complete")
        out.reason = str(done.get("reason"))
        out.times_ms["run-complete"] = (time.perf_counter() - t0) * 1000
        out.cpu_ms = _cpu_ms(_node_pid(shim))
        out.phases_ms["the run (compile, link, execute, events)"] = out.cpu_ms - at_warm
        out.phases_ms["unaccounted (between steps, reading stdin/fd 3)"] = max(
            0.0, at_ready - float(boot.get("total", at_ready)))
    finally:
        shim.close()
        launcher.close()
        shutil.rmtree(home, ignore_errors=True)
    if profile_dir:
        out.profile = summarise_profile(profile_dir)
    return out


def _node_pid(shim: Shim) -> int:
    """Node's own pid: in a sandbox, the child of its pid 1 (``shim.pid`` is bubblewrap's)."""
    if shim.process is not None and shim.process.sandboxed:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return shim.process.init_children()[0]
    return shim.pid


def executor_cpu(node: str, repo_dir: str, runs: int, memory_mb: int = 500,
                 prepare: bool = True) -> tuple[float, float]:
    """A real strict executor taking ``runs`` trivial runs 0.3 s apart (a standby always
    waiting): (its own Python CPU ms per run, its shims' CPU ms per run, reaped ones too)."""
    init = {"node": node, "repo_dir": repo_dir, "isolation": "strict", "prewarm": [COMMON],
            "adaptors": {"offline": True}, "prepare": prepare,
            "limits": {"timeout_ms": 60_000, "memory_mb": memory_mb, "payload_mb": 10,
                       "log_payload_mb": 1}}
    handle = ExecutorHandle.spawn(init)
    try:
        handle.wait_ready(120)
        for _ in range(3):  # the first runs pay for first loads (and any preparing)
            _one_run(handle)
        proc = psutil.Process(handle.pid)
        own0, all0 = _tree_cpu(proc)
        for _ in range(runs):
            time.sleep(0.3)
            _one_run(handle)
        own1, all1 = _tree_cpu(proc)
    finally:
        handle.close()
    own = (own1 - own0) * 1000 / runs
    return own, (all1 - all0) * 1000 / runs - own


def _tree_cpu(proc: psutil.Process) -> tuple[float, float]:
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return t.user + t.system, total


def _one_run(handle: ExecutorHandle) -> None:
    run_id = str(uuid.uuid4())
    handle.run(run_id, {"id": run_id, "options": {}, "workflow": {"steps": [
        {"id": "a", "name": "a", "expression": JOB, "adaptors": [COMMON],
         "configuration": {}}]}}, {"data": {}}, None)
    while True:
        message = handle.recv(120)
        if message is None:
            raise RuntimeError("the executor did not answer within 120 s")
        if message["type"] == "ready":
            return


def _cpu_ms(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _bucket(url: str, function: str) -> str:
    if not url:
        if function in ("(garbage collector)",):
            return "GC"
        if function in ("(idle)",):
            return "idle"
        if function == "(program)":
            return "V8/Node native (parse, compile, bootstrap)"
        return "native"
    if "/.prepared/" in url or "/language-" in url or "/.repo/" in url:
        return "adaptor (its module code)"
    if "@openfn/runtime" in url or "@openfn/logger" in url:
        return "@openfn/runtime + logger"
    if "/pool/shim/compiler" in url or "/acorn" in url or "/astring" in url \
            or "/source-map" in url:
        return "job compiler (acorn, astring, source-map)"
    if url.startswith("node:internal/modules") or "node:internal/modules" in url:
        return "Node module loader (resolve, read, link)"
    if "/pool/shim/" in url:
        return "shim (protocol, run bookkeeping)"
    if url.startswith("node:"):
        return "other Node internals"
    return "other"


def summarise_profile(profile_dir: str) -> dict[str, float]:
    """Self time per bucket (ms) from the one ``.cpuprofile`` in ``profile_dir``."""
    files = sorted(Path(profile_dir).glob("*.cpuprofile"))
    if not files:
        return {}
    data = json.loads(files[-1].read_text())
    nodes = {n["id"]: n for n in data["nodes"]}
    deltas = data.get("timeDeltas") or []
    totals: collections.Counter[str] = collections.Counter()
    for sample, delta in zip(data.get("samples") or [], deltas, strict=False):
        frame = nodes[sample]["callFrame"]
        totals[_bucket(frame.get("url", ""), frame.get("functionName", ""))] += delta / 1000
    return dict(totals.most_common())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default=os.environ.get("WORKER_NODE_BINARY") or "node")
    parser.add_argument("--repo-dir", default=os.environ.get("WORKER_REPO_DIR")
                        or str(Path.cwd() / ".repo"))
    parser.add_argument("--memory-mb", type=int, default=500)
    parser.add_argument("--plain", action="store_true",
                        help="no prepared adaptor, no compile cache (cold's path)")
    parser.add_argument("--executor-runs", type=int, default=0, metavar="N",
                        help="also N runs through a real strict executor: its own CPU per run")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="write a --cpu-prof profile there and print its breakdown")
    args = parser.parse_args(argv)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        os.chmod(args.profile, 0o777)  # the sandboxed shim writes it as its (slot) uid
    result = measure_shim(args.node, args.repo_dir, args.memory_mb, args.plain, args.profile)
    print(f"node {args.node}, {'plain' if args.plain else 'prepared + compile cache'}: "
          f"run {result.reason}; wall ms: " + ", ".join(
              f"{k} {v:.0f}" for k, v in result.times_ms.items()) +
          f"; shim CPU {result.cpu_ms:.0f} ms")
    print(result.hit_line())
    print("shim CPU by step (ms):")
    for name, ms in result.phases_ms.items():
        print(f"  {ms:7.0f}  {name}")
    if result.profile:
        total = sum(v for k, v in result.profile.items() if k != "idle")
        print(f"CPU profile (self time, {total:.0f} ms sampled, idle left out):")
        for name, ms in result.profile.items():
            if name != "idle":
                print(f"  {ms:7.0f} ms  {ms / total:5.1%}  {name}")
    if args.executor_runs:
        own, shims = executor_cpu(args.node, args.repo_dir, args.executor_runs, args.memory_mb,
                                  prepare=not args.plain)
        print(f"strict executor, {args.executor_runs} runs: its own Python {own:.0f} ms CPU "
              f"per run, its shims {shims:.0f} ms per run")
    return 0 if result.reason == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
