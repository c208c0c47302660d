"""A real pool under what conf/poolctl.service confines it to, without systemd as PID 1: a
read-only filesystem but the adaptor repo (``ProtectSystem=strict`` + its state directory), a
private ``/tmp`` (``PrivateTmp``), no new privileges and only the unit's bounding set of
capabilities. It boots, joins, runs a job to success and stops cleanly — the hardening leaves
the pool (and what it starts) working. bubblewrap builds the mounts; setpriv drops the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from pool.devserver.server import DevServer
from tests.conf.manifests import CONF, ROOT
from tests.supervisor.conftest import (
    DEADLINE,
    HELLO_BODY,
    REPO,
    free_port,
    job,
    plan,
    wait_run,
)

BWRAP, SETPRIV = shutil.which("bwrap"), shutil.which("setpriv")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not BWRAP or not SETPRIV,
                                reason="needs root, bubblewrap and setpriv (CI has them)")


def unit_setting(name: str) -> str:
    found = re.findall(rf"^{name}=(.*)$", (CONF / "poolctl.service").read_text(), re.MULTILINE)
    assert found, f"poolctl.service sets no {name}="
    return found[-1].strip()


def confined(argv: list[str]) -> list[str]:
    """``argv`` inside the unit's confinement."""
    assert unit_setting("ProtectSystem") == "strict"
    assert unit_setting("PrivateTmp") == "yes"
    assert unit_setting("NoNewPrivileges") == "yes"
    caps = [c.removeprefix("CAP_").lower() for c in unit_setting("CapabilityBoundingSet").split()]
    mounts = [BWRAP, "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
              "--tmpfs", "/tmp", "--bind", REPO, REPO, "--die-with-parent", "--"]
    drop = [SETPRIV, "--no-new-privs", "--bounding-set", ",".join(["-all"] + [f"+{c}" for c in caps]),
            "--inh-caps", "-all", "--"]
    return mounts + drop + argv


def test_the_pool_runs_jobs_under_the_units_confinement(lightning: DevServer) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(lightning.worker_env(), WORKER_REPO_DIR=REPO)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            confined([sys.executable, str(ROOT / "bin" / "poolctl"), "start", "--size", "1",
                      "--isolation", "strict", "--offline", "--port", str(port),
                      "--http-host", "127.0.0.1", "--backoff", "0.05/0.5"]),
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            run = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
            (pool,) = psutil.Process(proc.pid).children()  # bubblewrap's child: the supervisor
            pool.send_signal(signal.SIGTERM)  # as systemd's KillMode=mixed: the supervisor only
            code = proc.wait(DEADLINE)  # bubblewrap exits with its child's code
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            output = log.read().decode(errors="replace")
    assert (run["state"], code) == ("success", 0), output[-3000:]
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    assert "NoNewPrivs:\t0" in status  # the confinement was the child's, not this test's
