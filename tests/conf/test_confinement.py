"""A real pool inside the confinement conf/ gives it — the systemd unit's, and the Kubernetes
pod's — acted out without systemd as PID 1 or a cluster: bubblewrap makes the filesystem
read-only but for the directories the config makes writable (``ProtectSystem=strict`` with
``StateDirectory=``/``CacheDirectory=``; ``readOnlyRootFilesystem`` with its ``emptyDir``s) and
a private ``/tmp``; setpriv sets no-new-privileges and the configured capabilities alone; the
pool gets the config's own environment. It boots, runs the job to success in ``strict`` (in
the pod, after installing its adaptor with npm into the empty repo, with a read-only home) and
stops cleanly on SIGTERM to itself alone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from pool.devserver.server import DevServer
from pool.settings import SETTINGS
from tests.conf.manifests import CONF, ROOT, one
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
READS_SECRET_FILES = "WORKER_SECRET_FILE" in {e for row in SETTINGS for e in row.env}


@dataclass
class Confinement:
    """What a config confines the pool to, its paths still the config's own."""

    writable: list[str]                  # directories the pool may write
    env: dict[str, str]
    caps: list[str]                      # the only capabilities left (lower case, no CAP_)
    secret_file: str                     # where the config puts the worker secret
    hidden: list[str] = field(default_factory=list)  # made empty and read-only


def unit() -> Confinement:
    text = (CONF / "poolctl.service").read_text()

    def setting(name: str) -> str:
        found = re.findall(rf"^{name}=(.*)$", text, re.MULTILINE)
        assert found, f"poolctl.service sets no {name}="
        return found[-1].strip()

    assert setting("ProtectSystem") == "strict" and setting("PrivateTmp") == "yes"
    assert setting("NoNewPrivileges") == "yes" and setting("ProtectHome") == "yes"
    env = dict(re.findall(r"^Environment=(\S+?)=(.*)$", text, re.MULTILINE))
    directories = {"StateDirectory": "/var/lib/", "CacheDirectory": "/var/cache/"}
    writable = [base + setting(name) for name, base in directories.items()]
    secret = setting("LoadCredential").split(":", 1)[0]
    caps = [c.removeprefix("CAP_").lower() for c in setting("CapabilityBoundingSet").split()]
    return Confinement(writable + ["%d"], env, caps, f"%d/{secret}", ["/root", "/home"])


def pod() -> Confinement:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False  # = no_new_privs
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = container["volumeMounts"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return Confinement([m["mountPath"] for m in mounts], env,
                       [c.lower() for c in context["capabilities"]["add"]],
                       env["WORKER_SECRET_FILE"])


def moved(value: str, places: dict[str, Path]) -> str:
    for there, here in places.items():
        value = value.replace(there, str(here))
    return value


# npm once (the pod's: its home is read-only, the unit gives one); the unit's repo holds the
# test adaptors
@pytest.mark.parametrize(("config", "install"), [(unit, False), (pod, True)],
                         ids=["systemd", "kubernetes"])
def test_the_pool_runs_a_job_in_its_confinement(config, install: bool, lightning: DevServer,
                                               tmp_path: Path) -> None:
    box = config()
    places = {path: tmp_path / f"w{i}" for i, path in enumerate(box.writable)}
    for here in places.values():
        here.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update({name: moved(value, places) for name, value in box.env.items()},
               **lightning.worker_env())
    # The stand-in (bubblewrap around the pool) cannot host the pool's own sandbox: bubblewrap
    # inside it is refused a new /proc ("Can't mount proc ... Operation not permitted"). So the
    # pool runs its shims unsandboxed here; what this checks is that the unit's or the pod's
    # confinement (files, homes, capabilities, no new privileges) leaves the pool working.
    # The sandbox itself is tests/security's; inside a real unit or pod it is not tested here.
    env["WORKER_SANDBOX"] = "none"
    secret = Path(moved(box.secret_file, places))
    secret.write_text(env["WORKER_SECRET"])
    secret.chmod(0o400)
    if READS_SECRET_FILES:
        del env["WORKER_SECRET"]  # the config's way: the secret file only
        # any other secret the config hands over as a file (the pod's public key): the file
        # holds the dev server's value, and the variable goes
        for name in [n for n in env if f"{n}_FILE" in env and n != "WORKER_SECRET"]:
            held = Path(env[f"{name}_FILE"])
            held.parent.mkdir(parents=True, exist_ok=True)
            held.write_text(env.pop(name))
            held.chmod(0o400)
    mounts = [BWRAP, "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
              "--tmpfs", "/tmp"]
    for path in box.hidden:
        mounts += ["--tmpfs", path]
    # the Python the pool runs on, were it installed under a home (a pyenv in /root here), and
    # this checkout with its venv, as installed software (read-only), wherever it lies (a CI
    # clone may be under /tmp)
    mounts += ["--ro-bind", sys.base_prefix, sys.base_prefix, "--ro-bind", str(ROOT), str(ROOT)]
    for path in box.hidden:
        mounts += ["--remount-ro", path]
    mounts += ["--bind", str(tmp_path), str(tmp_path)]
    if not install:  # the test adaptors, in the config's repo directory
        mounts += ["--bind", REPO, env["WORKER_REPO_DIR"]]
    mounts += ["--die-with-parent", "--"]
    drop = [SETPRIV, "--no-new-privs", "--bounding-set",
            ",".join(["-all"] + [f"+{c}" for c in box.caps]), "--inh-caps", "-all", "--"]
    argv = [sys.executable, str(ROOT / "bin" / "poolctl"), "start", "--size", "1",
            "--isolation", "strict", "--port", str(free_port()), "--http-host", "127.0.0.1",
            "--backoff", "0.05/0.5", *([] if install else ["--offline"])]
    run_id = lightning.enqueue(plan(job(HELLO_BODY)))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(mounts + drop + argv, env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        code = None
        try:
            lightning.wait_for_run(run_id, DEADLINE)
            (pool,) = psutil.Process(proc.pid).children()  # bubblewrap's child: the supervisor
            pool.send_signal(signal.SIGTERM)  # as KillMode=mixed and a container's init do
            code = proc.wait(DEADLINE)  # bubblewrap exits with its child's code
        except (TimeoutError, subprocess.TimeoutExpired):
            pass  # the pool's output below says why
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            output = log.read().decode(errors="replace")
    run = wait_run(lightning, run_id) if code is not None else lightning.run(run_id)
    assert (run["state"], code) == ("success", 0), output[-3000:]
    if install:
        repo = Path(env["WORKER_REPO_DIR"]) / "node_modules" / "@openfn"
        assert [p.name for p in repo.iterdir()] == ["language-common_3.3.4"]  # npm ran
        # npm's cache is kept in the repo (pool/npm_sandbox.py), the one place npm may write
        assert (Path(env["WORKER_REPO_DIR"]) / ".npm-cache").is_dir(), output[-3000:]
