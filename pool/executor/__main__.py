"""``python -m pool.executor --fd N [--parent-pid P]``: one executor, serving the socket on fd N.

The supervisor (``pool.executor.handle``) starts it as a fresh interpreter, in a session of
its own. First thing, it asks the kernel to signal it when its parent dies
(``PR_SET_PDEATHSIG``) and checks that the parent is still the one that started it (the parent
may have died before the prctl), so an executor never outlives its supervisor; EOF on the
socket covers the rest.

The death signal is SIGTERM, not SIGKILL, because the executor must take its shims with it: a
shim spinning in a job's busy loop cannot notice fd 3 closing, and ``posix_spawn`` cannot arm a
death signal for it. The handler kills the executor's whole process group (the executor and
every shim it started) at once — the one handler that acts instead of enqueueing, because the
process is dying anyway.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from pool.undumpable import make_undumpable

PR_SET_PDEATHSIG = 1


def kill_process_group(signum: int, frame: object) -> None:
    """SIGTERM (the parent died, or an operator's kill): take every shim down with us."""
    os.killpg(os.getpgrp(), signal.SIGKILL)


def die_with_parent(parent_pid: int | None) -> bool:
    """Arm PR_SET_PDEATHSIG (Linux); False if the parent is already gone."""
    signal.signal(signal.SIGTERM, kill_process_group)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return parent_pid is None or os.getppid() == parent_pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pool.executor",
                                     description="One poolctl executor (started by poolctl).")
    parser.add_argument("--fd", type=int, required=True,
                        help="inherited socketpair end speaking the executor protocol")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="the supervisor's pid: exit at once if it is already gone")
    args = parser.parse_args(argv)
    # the OOM killer takes executors and their shims (which inherit this) before the supervisor;
    # first, while /proc/self is still ours: a process that is not dumpable has its /proc files
    # owned by root, and a non-root executor could no longer write them
    from pool.executor.sandbox import raise_oom_score

    raise_oom_score()
    # before any run's credentials arrive: a job escaped into a shim of the same uid must not
    # read this process's memory (pool/undumpable.py)
    make_undumpable()
    if not die_with_parent(args.parent_pid):
        return 0
    # Ctrl-C in a terminal reaches the whole group: the supervisor decides, not us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from pool.executor.process import main as serve

    return serve(args.fd)


if __name__ == "__main__":
    sys.exit(main())
