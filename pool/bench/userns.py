"""``python -m pool.bench.userns -- COMMAND...``: run COMMAND in a new user namespace owned by
the caller, the caller's uid and gid mapped to themselves.

Why the benchmark needs it: the supervisor and executors turn dumpable off
(``pool.undumpable``), after which only a holder of CAP_SYS_PTRACE over them may read their
``/proc/<pid>/smaps_rollup`` — the PSS that ``bench`` and ``tune`` report and size the pool by.
Root holds it; a benchmark that is not root does not, over processes in its own namespace.
But the owner of a user namespace holds every capability over the processes in it, from
outside. So when not root, the benchmark starts the pool in a namespace it owns: the pool runs
as the same uid with no capability at all (its memory is still closed to its own jobs, which
run inside it), and the benchmark outside can read its PSS again. CPU, memory and behaviour
are those of the pool outside a namespace: a user namespace changes who may do what, not how
anything runs.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000


class UserNamespaceError(OSError):
    """No user namespace could be made (disabled by the host: sysctl or AppArmor)."""


def enter_own_user_namespace() -> None:
    """Move this process into a new user namespace, mapping our uid and gid to themselves."""
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        errno = ctypes.get_errno()
        raise UserNamespaceError(errno, f"unshare(CLONE_NEWUSER): {os.strerror(errno)} (user "
                                        "namespaces are disabled on this host)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)


def wrap(argv: list[str]) -> list[str]:
    """``argv`` run through this module (when not root; root reads PSS anyway)."""
    if os.geteuid() == 0:
        return argv
    return [sys.executable, "-m", "pool.bench.userns", "--", *argv]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m pool.bench.userns -- COMMAND...", file=sys.stderr)
        return 2
    try:
        enter_own_user_namespace()
    except OSError as exc:
        print(f"poolctl bench: cannot start the pool in a user namespace of its own, so its "
              f"memory (PSS) could not be read: {exc}", file=sys.stderr, flush=True)
        return 1
    os.execvp(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
