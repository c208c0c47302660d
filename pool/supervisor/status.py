"""``poolctl status``: the status reply (snapshot plus memory) and its table for humans.

RSS is read here with psutil rather than by the arbiter loop: it is a system call per
process, the loop should not pay it on every state change, and only a status request needs it.
An executor's RSS is its own plus its shim's, since the shim is where runs use memory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import psutil

from pool.supervisor.snapshot import PoolSnapshot


def process_rss(pid: int | None) -> int | None:
    """Resident bytes of one process, or None when it is gone or unreadable."""
    if not pid:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


def tree_rss(pid: int | None) -> int | None:
    """Resident bytes of a process and all its descendants: a sandboxed shim's ``pid`` is
    bwrap's, and the shim with whatever it started runs below it."""
    own = process_rss(pid)
    if own is None:
        return None
    try:
        children = psutil.Process(pid).children(recursive=True)
    except (psutil.Error, OSError):
        return own
    return own + sum(process_rss(child.pid) or 0 for child in children)


def status_reply(snapshot: PoolSnapshot) -> dict[str, Any]:
    """The snapshot as JSON, each executor with ``rss_bytes`` (executor + shim) added."""
    data = snapshot.to_dict()
    for executor in data["executors"]:
        parts = [process_rss(executor["pid"]), tree_rss(executor.get("shim_pid"))]
        known = [p for p in parts if p is not None]
        executor["rss_bytes"] = sum(known) if known else None
    return data


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.2f}GiB"


def format_age(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``, ``4d03h``: short and sortable by eye."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def render_status(reply: Mapping[str, Any], now: float | None = None) -> str:
    """The table ``poolctl status`` prints."""
    now = time.time() if now is None else now
    header = ("PID", "STATE", "RUN", "RUNS", "RSS", "AGE")
    rows = [header]
    for e in reply.get("executors", ()):
        started = e.get("started_at") or 0
        rows.append((
            str(e.get("pid", "-")),
            str(e.get("state", "-")),
            e.get("run_id") or "-",
            str(e.get("runs_done", 0)),
            format_bytes(e.get("rss_bytes")),
            format_age(now - started) if started else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    flags = []
    if reply.get("draining"):
        flags.append("draining")
    flags.append("queue joined" if reply.get("queue_joined") else "queue NOT joined")
    by_reason = reply.get("runs_by_reason") or {}
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(by_reason.items())) or "none yet"
    summary = [
        f"pool pid {reply.get('pid', '?')}: size {reply.get('size', '?')}, {', '.join(flags)}",
        f"claims in flight: {reply.get('claims_in_flight', 0)}",
        f"runs by reason: {reasons}",
        f"sandbox: {reply.get('sandbox') or '?'}",
    ]
    return "\n".join(summary + [""] + lines)
