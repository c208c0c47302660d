"""A real pool under what conf/poolctl.service confines it to, without systemd as PID 1: a
read-only filesystem but its state and cache directories (``ProtectSystem=strict`` with
``StateDirectory=``/``CacheDirectory=``), a private ``/tmp`` (``PrivateTmp``), an empty
``/root`` and ``/home`` (``ProtectHome``), no new privileges and only the unit's bounding set
of capabilities, with the unit's own ``Environment=`` lines. It boots, installs the job's
adaptor from npm into its empty repo, runs the job to success and stops cleanly: the hardening
leaves the pool, npm and the shims working. bubblewrap builds the mounts; setpriv the rest.
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
from pool.settings import SETTINGS
from tests.conf.manifests import CONF, ROOT
from tests.supervisor.conftest import DEADLINE, HELLO_BODY, free_port, job, plan, wait_run

BWRAP, SETPRIV = shutil.which("bwrap"), shutil.which("setpriv")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not BWRAP or not SETPRIV,
                                reason="needs root, bubblewrap and setpriv (CI has them)")
UNIT = (CONF / "poolctl.service").read_text()


def unit_setting(name: str) -> str:
    found = re.findall(rf"^{name}=(.*)$", UNIT, re.MULTILINE)
    assert found, f"poolctl.service sets no {name}="
    return found[-1].strip()


def unit_environment(dirs: dict[str, Path]) -> dict[str, str]:
    """The unit's ``Environment=`` lines, its directories and ``%d`` moved under ``dirs``."""
    env = {}
    for line in re.findall(r"^Environment=(\S+)=(.*)$", UNIT, re.MULTILINE):
        name, value = line
        for unit_path, here in dirs.items():
            value = value.replace(unit_path, str(here))
        env[name] = value
    return env


def confined(argv: list[str], writable: Path) -> list[str]:
    """``argv`` inside the unit's confinement; ``writable`` stands for its directories."""
    assert unit_setting("ProtectSystem") == "strict"
    assert unit_setting("PrivateTmp") == unit_setting("ProtectHome") == "yes"
    assert unit_setting("NoNewPrivileges") == "yes"
    caps = [c.removeprefix("CAP_").lower() for c in unit_setting("CapabilityBoundingSet").split()]
    mounts = [BWRAP, "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
              "--tmpfs", "/tmp", "--tmpfs", "/root", "--tmpfs", "/home",
              # the Python the pool runs on, were it installed under a home (a pyenv in /root
              # here; under the unit it is /opt/poolctl's and the system's)
              "--ro-bind", sys.base_prefix, sys.base_prefix,
              "--remount-ro", "/root", "--remount-ro", "/home",
              "--bind", str(writable), str(writable), "--die-with-parent", "--"]
    bounding = ",".join(["-all"] + [f"+{c}" for c in caps])
    return mounts + [SETPRIV, "--no-new-privs", "--bounding-set", bounding, "--inh-caps",
                     "-all", "--"] + argv


def test_the_pool_installs_and_runs_a_job_under_the_units_confinement(
        lightning: DevServer, tmp_path: Path) -> None:
    dirs = {"/var/lib/poolctl": tmp_path / "state", "/var/cache/poolctl": tmp_path / "cache",
            "%d": tmp_path / "credentials"}
    for path in dirs.values():
        path.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(unit_environment(dirs), **lightning.worker_env())
    (dirs["%d"] / "worker-secret").write_text(env["WORKER_SECRET"])
    (dirs["%d"] / "worker-secret").chmod(0o400)
    if "WORKER_SECRET_FILE" in {e for row in SETTINGS for e in row.env}:
        del env["WORKER_SECRET"]  # the unit's way: the credential file only
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            confined([sys.executable, str(ROOT / "bin" / "poolctl"), "start", "--size", "1",
                      "--isolation", "strict", "--port", str(port), "--http-host",
                      "127.0.0.1", "--backoff", "0.05/0.5"], tmp_path),
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        run_id = lightning.enqueue(plan(job(HELLO_BODY)))
        try:
            lightning.wait_for_run(run_id, DEADLINE)
            (pool,) = psutil.Process(proc.pid).children()  # bubblewrap's child: the supervisor
            pool.send_signal(signal.SIGTERM)  # as systemd's KillMode=mixed: the supervisor only
            code = proc.wait(DEADLINE)  # bubblewrap exits with its child's code
        except (TimeoutError, subprocess.TimeoutExpired, ValueError):
            code = None  # the pool's output below says why
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            output = log.read().decode(errors="replace")
    run = wait_run(lightning, run_id) if code is not None else lightning.run(run_id)
    assert (run["state"], code) == ("success", 0), output[-3000:]
    installed = list((dirs["/var/lib/poolctl"] / "repo" / "node_modules" / "@openfn").iterdir())
    assert [p.name for p in installed] == ["language-common_3.3.4"]  # npm ran, confined
    assert (dirs["/var/cache/poolctl"] / "npm").is_dir()  # into the unit's cache directory
