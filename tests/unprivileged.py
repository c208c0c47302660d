"""Run a test's processes without the power a security test must not have: reading another
process's memory regardless of dumpable (CAP_SYS_PTRACE, which root holds).

When the tests run as root, that is the ``nobody`` user — with an interpreter nobody can run:
ours when it can, else the system's python of the same version with our packages on
``PYTHONPATH`` (pyenv installs under ``/root``, which nobody cannot enter). If no interpreter
works for nobody the test is skipped, saying why: root without CAP_SYS_PTRACE is no stand-in
(the kernel still lets it read a non-dumpable root process's ``environ``). When the tests do not
run as root, it is ourselves.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534


@dataclass(frozen=True)
class Unprivileged:
    uid: int
    python: str
    popen: dict[str, Any] = field(default_factory=dict)  # Popen's user, group, extra_groups
    pythonpath: str | None = None

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env


def _works(user: Unprivileged) -> bool:
    try:
        done = subprocess.run([user.python, "-c", "import pool.cli, psutil"],
                              env=user.env(os.environ), cwd=ROOT, capture_output=True,
                              timeout=60, check=False, **user.popen)
    except OSError:
        return False
    return done.returncode == 0


@functools.cache
def unprivileged() -> Unprivileged:
    if os.geteuid() != 0:
        return Unprivileged(os.getuid(), sys.executable)
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    paths = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"],
                             sysconfig.get_paths()["platlib"]])
    candidates = [Unprivileged(NOBODY, sys.executable, as_nobody)]
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system:
        candidates.append(Unprivileged(NOBODY, system, as_nobody, paths))
    for candidate in candidates:
        if _works(candidate):
            return candidate
    pytest.skip(f"no Python interpreter the nobody user can run (tried {sys.executable} and "
                f"{system or version}): an unprivileged user is what this test needs")
