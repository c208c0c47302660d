"""``PR_SET_DUMPABLE 0``: other processes of the same uid cannot read this one's memory.

A job that escapes the ``vm`` runs as the pool's uid (when no sandbox gives it another). For the
kernel, any process of the same uid may read ``/proc/<pid>/mem``, ``environ`` and ``fd/`` of
another, and attach to it with ptrace — unless the target is not dumpable: then only a holder of
``CAP_SYS_PTRACE`` over it (root, or the owner of the user namespace it runs in) may. The
supervisor (it holds the worker secret and every run's credentials for a moment) and each
executor (it holds its runs' credentials) therefore turn it off first thing. ``execve`` turns it
back on, so each process does it for itself; the shims it starts are dumpable again and are kept
apart by the sandbox instead. It also means no core dumps of these processes, which would hold
the same secrets.

What stops working for other processes of the uid: reading the pool's PSS from
``/proc/<pid>/smaps_rollup`` (``poolctl bench``/``tune`` cope: see ``pool.bench.userns``),
``py-spy``/``gdb`` without root. ``/proc/<pid>/stat``, ``statm`` and ``cmdline`` stay readable, so
CPU times, RSS and ``poolctl status`` are unaffected.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def make_undumpable() -> None:
    """Turn dumpable off for this process (Linux; elsewhere nothing to do). OSError on failure:
    a process meant to keep secrets from its neighbours must not run without it."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(errno)}")


def is_dumpable() -> bool:
    """Whether this process is dumpable (for tests and the start-up log)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(ctypes.CDLL(None, use_errno=True).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
