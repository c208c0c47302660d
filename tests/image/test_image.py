"""The container image (Containerfile), as built by ``make test-image``: what it declares, and
its entrypoint run from its own filesystem against a dev server on loopback.

``podman run`` cannot start a container on this machine (crun and hybrid cgroups), so the test
does what a runtime does, with util-linux: the image's filesystem (``podman create`` + ``podman
export``) becomes the root of new mount and PID namespaces (``pivot_root``, not ``chroot``: the
kernel refuses user namespaces, so bubblewrap, to a chrooted process), read-only as
conf/compose.yaml's ``read_only`` and the Deployment's ``readOnlyRootFilesystem`` make it, with
``/proc``, ``/dev`` and ``/sys``, a tmpfs ``/tmp``, empty folders mounted at the repo and state
dirs as volumes would be, the host's DNS files, and the image's entrypoint, working directory
and environment; ``tini`` is the namespace's PID 1, root its user, as in a container started
as root. Not a container runtime's seccomp profile, capability set or cgroup: those are the
runtime's, and not tested here.

The host's CA bundle is mounted over the image's (read-only), as an operator behind a proxy that
re-signs TLS mounts theirs: npm in the container reaches the registry through this machine's.

Run by ``make test-image`` only, which builds the image and names it in ``POOLCTL_IMAGE``
(``make test`` leaves tests/image out: it builds no images); run any other way, it fails
saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from pool.devserver.server import DevServer
from tests.image.conftest import FACTS
from tests.security.conftest import ESCAPE
from tests.security.probes import environ_probe, trojan_probe
from tests.supervisor.conftest import COMMON, free_port, http_get, plan, wait_run, wait_until

IMAGE = os.environ.get("POOLCTL_IMAGE")
PODMAN = ["podman", "--storage-driver", "vfs"]

# not among the adaptors the image bakes: the pool installs it from the npm registry at run time
NOT_BAKED = "@openfn/language-common@2.1.1"
REPO_DIR = "/var/lib/poolctl/repo"
SIZE = 2
BOOT_DEADLINE = 240.0  # seeding, two strict executors, the sandbox check: well under a minute
RUN_DEADLINE = 240.0  # the first run of NOT_BAKED waits for npm

# PID 1 of the new PID namespace until it execs the entrypoint: mounts the container's
# filesystems, makes the exported image the (read-only) root with pivot_root, drops the host's
LAUNCH = r"""
set -eu
root=$1 repo=$2 state=$3 ca=$4 workdir=$5
shift 5
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount --bind "$repo" "$root/var/lib/poolctl/repo"
mount --bind "$state" "$root/var/lib/poolctl/state"
mount --bind "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
mount -o remount,bind,ro "$root/etc/ssl/certs/ca-certificates.crt"
mount -o remount,bind,ro "$root"
cd "$root"
pivot_root . .
umount -l .
cd "$workdir"
exec "$@"
"""


def podman(*args: str, timeout: float = 300) -> str:
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(autouse=True, scope="module")
def _built_image() -> None:
    if not IMAGE:
        pytest.fail("the container image's test: run `make test-image`, which builds the image "
                    "(podman, mmdebstrap, root) and names it in POOLCTL_IMAGE")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("the container image's test needs root and util-linux's unshare")


@pytest.fixture(scope="module")
def inspected() -> dict[str, Any]:
    (image,) = json.loads(podman("image", "inspect", str(IMAGE)))
    return image


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's filesystem, as ``podman export`` gives it, unpacked."""
    where = tmp_path_factory.mktemp("image")
    container = podman("create", str(IMAGE)).strip()
    try:
        podman("export", "-o", str(where / "rootfs.tar"), container)
    finally:
        podman("rm", container)
    root = where / "rootfs"
    root.mkdir()
    subprocess.run(["tar", "-xpf", str(where / "rootfs.tar"), "-C", str(root), "--numeric-owner"],
                   check=True, timeout=300)
    (where / "rootfs.tar").unlink()
    # what a container runtime writes into every container: the host's DNS
    for name in ("resolv.conf", "hosts"):
        shutil.copyfile(f"/etc/{name}", root / "etc" / name)
    yield root
    shutil.rmtree(where, ignore_errors=True)


@dataclass
class Container:
    """The image's entrypoint running in namespaces of its own on the exported filesystem."""

    proc: subprocess.Popen[bytes]
    log_path: str
    lightning: DevServer
    repo: Path  # the host folder mounted at WORKER_REPO_DIR, as a volume
    port: int

    @property
    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def init(self) -> psutil.Process:
        """The namespace's PID 1 (tini, once the launch script has exec'd it)."""
        (child,) = psutil.Process(self.proc.pid).children()
        return child

    def supervisor(self) -> tuple[int, int]:
        """The supervisor: tini's child; (host pid, pid inside the container)."""
        (child,) = self.init().children()
        with open(f"/proc/{child.pid}/status", encoding="utf-8") as fh:
            nspid = next(line for line in fh if line.startswith("NSpid:")).split()
        return child.pid, int(nspid[-1])

    def attack(self, body: str) -> dict[str, Any]:
        expression = f"fn(async state => {{ {ESCAPE} {body} }});"
        run = wait_run(self.lightning, self.lightning.enqueue(plan(
            {"id": "probe", "adaptor": COMMON, "body": expression})), deadline=RUN_DEADLINE)
        final = run.get("final_state") or {}
        run["report"] = final.get("data") if isinstance(final, dict) else None
        return run


def alias(specifier: str) -> str:
    """The repo's folder name for an adaptor version (pool/adaptors.py)."""
    name, version = specifier.rsplit("@", 1)
    return f"{name}_{version}"


def image_env(inspected: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in inspected["Config"]["Env"])


def readyz(port: int) -> bool:
    return http_get(port, "/readyz", timeout=2)[0] == 200


@pytest.fixture(scope="module")
def container(inspected: dict[str, Any], rootfs: Path) -> Iterator[Container]:
    volumes = Path(tempfile.mkdtemp(prefix="poolctl-image-volumes-"))
    repo, state = volumes / "repo", volumes / "state"
    repo.mkdir(mode=0o755)
    state.mkdir(mode=0o700)
    os.chmod(volumes, 0o755)
    config = inspected["Config"]
    port = free_port()
    lightning = DevServer()
    lightning.__enter__()
    env = {**image_env(inspected), **lightning.worker_env(), "HOME": "/root",
           "WORKER_PORT": str(port), "WORKER_HTTP_HOST": "127.0.0.1",
           "WORKER_CAPACITY": str(SIZE), "WORKER_BACKOFF": "0.05/0.5"}
    fd, log_path = tempfile.mkstemp(prefix="poolctl-image-", suffix=".log")
    command = [*config["Entrypoint"], *(config.get("Cmd") or [])]
    proc = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--kill-child",
         "/bin/sh", "-c", LAUNCH, "launch", str(rootfs), str(repo), str(state),
         "/etc/ssl/certs/ca-certificates.crt", config.get("WorkingDir") or "/", *command],
        env=env, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.close(fd)
    box = Container(proc, log_path, lightning, repo, port)
    FACTS.append(f"entrypoint: {' '.join(command)} (tini is PID 1 of the container's PID "
                 "namespace, root its user, the image's filesystem read-only but for the "
                 "repo and state volumes and /tmp)")
    try:
        started = time.monotonic()

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the container exited with {proc.returncode}:\n"
                                     f"{box.output[-4000:]}")
            return readyz(port)

        wait_until(ready, "the container's pool to be ready (/readyz)", BOOT_DEADLINE)
        FACTS.append(f"ready (joined, executors warm) {time.monotonic() - started:.0f} s "
                     "after start")
        yield box
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lightning.__exit__(None, None, None)
        shutil.rmtree(volumes, ignore_errors=True)
        os.unlink(log_path)


def test_the_image_declares_how_it_runs(inspected: dict[str, Any]) -> None:
    config = inspected["Config"]
    assert config["Entrypoint"] == ["tini", "--", "poolctl"]  # no -g: SIGTERM to poolctl alone
    assert config["Cmd"] == ["start"]
    assert config["StopSignal"] == "SIGTERM"
    check = inspected["Healthcheck"]  # kept by the docker format only (not OCI)
    assert check["Test"][0] == "CMD" and "/livez" in " ".join(check["Test"]), check
    env = image_env(inspected)
    assert env["WORKER_REPO_DIR"] == REPO_DIR
    assert env["WORKER_STATE_DIR"] == "/var/lib/poolctl/state"
    assert env["WORKER_SEED_REPO"] == "/usr/lib/poolctl/seed-repo"
    labels = config["Labels"]
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    FACTS.append(f"image {IMAGE}: {inspected['Size'] / 1e6:.0f} MB uncompressed, base "
                 f"{labels['org.opencontainers.image.base.name']}")
    FACTS.append(f"healthcheck: {' '.join(check['Test'][1:3])} ... /livez, every "
                 f"{check['Interval'] / 1e9:g} s")


def test_the_filesystem_holds_what_the_pool_needs(rootfs: Path) -> None:
    def run(*argv: str) -> str:
        proc = subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(rootfs), *argv], capture_output=True, text=True,
                              timeout=60, check=False,
                              env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root"})
        assert proc.returncode == 0, (argv, proc.stderr)
        return proc.stdout.strip()

    node = run("node", "--version")
    assert int(node.lstrip("v").split(".")[0]) >= 20, node
    npm = run("npm", "--version")
    python = run("python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    assert tuple(map(int, python.split("."))) >= (3, 11)
    for tool in ("tini", "bwrap", "setpriv", "prlimit"):
        run("sh", "-c", f"command -v {tool}")
    seed = rootfs / "usr/lib/poolctl/seed-repo"
    baked = json.loads((seed / "package.json").read_text())["dependencies"]
    assert alias(COMMON) in baked, baked
    assert alias(NOT_BAKED) not in baked
    assert not os.stat(seed / "package.json").st_mode & 0o222  # read-only
    assert not any((seed / name).exists() for name in (".prepared", ".compile-cache",
                                                        ".npm-cache"))
    FACTS.append(f"in it: Node {node}, npm {npm}, Python {python}, tini, bubblewrap; seed "
                 f"repo: {', '.join(sorted(baked))}")


def test_it_boots_seeds_its_repo_and_logs_the_sandbox_auto_chose(container: Container,
                                                                  inspected: dict[str, Any],
                                                                  rootfs: Path) -> None:
    output = container.output
    sandbox = [line for line in output.splitlines() if "sandbox uid:" in line]
    assert sandbox, output[-4000:]  # auto, as root: uid
    FACTS.append("log: " + sandbox[0].split("] ", 1)[-1].strip())
    seeded = [line for line in output.splitlines() if "seed repo /usr/lib/poolctl/seed-repo" in line]
    assert seeded and "copied nothing" not in seeded[0], output[-4000:]
    assert (container.repo / "node_modules" / alias(COMMON) / "package.json").is_file()
    FACTS.append("log: " + seeded[0].split("] ", 1)[-1].strip())
    # the image's own HEALTHCHECK command, run inside the container (as `podman healthcheck
    # run` would exec it), answers 0
    check = inspected["Healthcheck"]["Test"][1:]
    init = container.init().pid
    proc = subprocess.run(["nsenter", "-t", str(init), "-m", "-p", "-r", "-w", "--", *check],
                          env={**image_env(inspected), "WORKER_PORT": str(container.port)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    FACTS.append("HEALTHCHECK command inside the container: exit 0")
    # and the pool got there with the image's filesystem read-only (the volumes aside)
    touch = subprocess.run(["nsenter", "-t", str(init), "-m", "-r", "--", "/usr/bin/touch",
                            "/usr/lib/poolctl/written"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch


def test_a_run_with_an_adaptor_not_baked_in_is_installed_and_succeeds(
        container: Container) -> None:
    body = 'fn(state => ({ ...state, data: { ...state.data, %s: true } }));'
    run_id = container.lightning.enqueue(plan(
        {"id": "baked", "adaptor": COMMON, "body": body % "baked"},
        {"id": "installed", "adaptor": NOT_BAKED, "body": body % "installed"}))
    run = wait_run(container.lightning, run_id, deadline=RUN_DEADLINE)
    assert run["state"] == "success", (run.get("error_message"), container.output[-4000:])
    assert run["final_state"]["data"] == {"baked": True, "installed": True}, run["final_state"]
    installed = container.repo / "node_modules" / alias(NOT_BAKED) / "package.json"
    assert installed.is_file()  # npm put it into the volume
    assert "npm runs without a sandbox" not in container.output  # npm ran in bubblewrap
    FACTS.append(f"run {run_id}: {run['state']} (steps on {COMMON}, seeded, and {NOT_BAKED}, "
                 "installed by npm from the registry at run time, in its sandbox)")


def test_a_hostile_job_reads_no_secret_and_cannot_change_an_adaptor(
        container: Container) -> None:
    _host_pid, supervisor = container.supervisor()
    run = container.attack(environ_probe(supervisor))
    report = run["report"]
    assert report is not None, (run["state"], run.get("error_message"))  # the probe ran
    assert container.lightning.secret not in json.dumps(report), report
    assert report["found"] == [], report
    dist = f"{REPO_DIR}/node_modules/{alias(COMMON)}/dist/index.js"
    host_copy = container.repo / "node_modules" / alias(COMMON) / "dist" / "index.js"
    before = host_copy.read_bytes()
    trojan = container.attack(trojan_probe(dist))
    assert trojan["report"] is not None, trojan.get("error_message")
    assert set(trojan["report"].values()) <= {"EROFS", "EACCES", "EPERM"}, trojan["report"]
    assert host_copy.read_bytes() == before
    FACTS.append(f"probe /proc/<supervisor (pid {supervisor} in the container)>/environ: "
                 f"refused (the job saw {report['visible']} pids, read {len(report['seen'])} "
                 f"environ files, found no WORKER_SECRET)")
    FACTS.append(f"probe writing the seeded adaptor in the repo: refused {trojan['report']}")


def test_sigterm_stops_it_cleanly(container: Container) -> None:
    init = container.init()
    assert init.name() == "tini"
    stopped = time.monotonic()
    init.send_signal(signal.SIGTERM)
    code = container.proc.wait(BOOT_DEADLINE)
    assert code == 0, container.output[-4000:]
    assert not psutil.pid_exists(init.pid)
    FACTS.append(f"SIGTERM to tini: the pool drained and exited 0 in "
                 f"{time.monotonic() - stopped:.1f} s; tini exited 0")
