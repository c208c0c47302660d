"""Sandbox modes: what a shim's process may see and do, decided once per pool.

The ``vm`` a job runs in is no boundary (``setTimeout.constructor('return process')()``), so the
operating system keeps tenants apart. ``--sandbox`` chooses how (docs/design/sandbox.md):

``namespaces``  bubblewrap (``bwrap``): new user, PID, mount, IPC, UTS and cgroup namespaces,
                network shared; its own ``/proc``; ``--die-with-parent``, ``--new-session``,
                ``--disable-userns``; Node, the shim code and the adaptor repo read-only, the
                files jobs legitimately need (DNS, hosts, nsswitch, CA certificates, a passwd of
                its own), a private size-limited ``/tmp`` and ``HOME``; nothing else of ours.
``uid``         the pool is root: each executor slot has two uids of its own from
                ``--sandbox-uids`` and its shims alternate between them, so a running shim never
                shares a uid with the standby that takes the next run. Mechanism: the executor
                (root) spawns ``setpriv`` (util-linux), which drops to the slot uid (groups
                cleared, ``no_new_privs``) and arms ``PR_SET_PDEATHSIG`` *after* the uid change
                (the kernel clears it on a credential change), then execs the namespaces
                sandbox above as that uid.
``auto``        ``uid`` when root, else ``namespaces`` (the default).
``none``        the shim runs as the pool's own process, as before: nothing above holds.

Limits inside every sandbox (``impose_limits``: set so the process count is the sandbox's own,
not the uid's): tasks (``RLIMIT_NPROC``; uid 0 is exempt from it, which is why a root pool uses
``uid``), open files, file size; ``oom_score_adj`` 1000 on everything in it, so the kernel's OOM
killer takes a shim before the supervisor.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

MODES = ("auto", "uid", "namespaces", "none")
SANDBOXED = ("uid", "namespaces")
INFO_FD = 4  # bwrap --info-fd: tells us the host pid of the sandbox's pid 1
# The uid and gid every sandboxed process has *inside* its user namespace, whatever host uid
# (slot uid, or the pool's) it runs as. Node names its compile cache after the uid it sees, so
# one cache, built once in a sandbox like the shims', is hit by every slot's shims.
SHIM_UID = SHIM_GID = 1000
SHIM_USER = "poolctl"
OOM_SCORE_ADJ = 1000
SHIM_DIR = str(Path(__file__).resolve().parent.parent / "shim")

# system trees a dynamically linked Node needs, bound read-only where they exist (Debian's
# merged /usr makes /bin, /lib, /lib64, /sbin symlinks: those become symlinks inside too)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# what jobs legitimately need from /etc: the dynamic linker's cache, DNS and name services,
# CA certificates, time zone. The host's passwd and group are not among them: the sandbox
# gets files of its own naming only its uids (os.userInfo works; the host's users stay hidden).
ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "resolv.conf", "host.conf", "nsswitch.conf",
    "gai.conf", "services", "protocols", "hostname", "localtime", "timezone", "ssl",
    "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies", "os-release",
)


class SandboxError(Exception):
    """The asked-for sandbox cannot work here; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxConfig:
    """The ``init`` message's ``sandbox`` field: a resolved mode (never ``auto``) and limits."""

    mode: str = "none"
    uids: tuple[int, ...] = ()  # uid mode: this executor slot's two uids
    tmp_mb: int = 64  # size of the private /tmp and of HOME, each
    pids: int = 256  # tasks (processes and threads) in one sandbox
    nofile: int = 1024
    fsize_mb: int = 256
    hosts_file: str = "/etc/hosts"

    def to_message(self) -> dict[str, Any]:
        data = asdict(self)
        data["uids"] = list(self.uids)
        return data

    @staticmethod
    def from_message(data: Any) -> SandboxConfig:
        if data is None:
            return SandboxConfig()
        if not isinstance(data, dict):
            raise ValueError("sandbox must be an object")
        mode = data.get("mode", "none")
        if mode not in SANDBOXED + ("none",):
            raise ValueError(f"sandbox.mode must be uid, namespaces or none, got {mode!r}")
        uids = tuple(int(u) for u in data.get("uids") or ())
        if mode == "uid" and len(uids) != 2:
            raise ValueError("sandbox.uids must hold this slot's two uids in uid mode")
        return SandboxConfig(
            mode=mode, uids=uids,
            tmp_mb=_positive(data, "tmp_mb", 64), pids=_positive(data, "pids", 256),
            nofile=_positive(data, "nofile", 1024), fsize_mb=_positive(data, "fsize_mb", 256),
            hosts_file=str(data.get("hosts_file") or "/etc/hosts"))


def _positive(data: dict[str, Any], key: str, default: int) -> int:
    value = int(data.get(key, default))
    if value <= 0:
        raise ValueError(f"sandbox.{key} must be above 0, got {value}")
    return value


def parse_uid_range(text: str) -> range:
    """``"880000-889999"`` → the uids a root pool gives its shims; ValueError if malformed."""
    try:
        first, last = (int(part) for part in str(text).split("-", 1))
    except ValueError:
        raise ValueError(f"expected FIRST-LAST (e.g. 880000-889999), got {text!r}") from None
    if not 0 < first <= last < 2**31:
        raise ValueError(f"uid range {text!r} must be within 1-{2**31 - 1}, first <= last")
    return range(first, last + 1)


def slot_uids(uid_range: range, index: int) -> tuple[int, int]:
    """The two uids of executor slot ``index``; SandboxError when the range is too small."""
    if 2 * index + 1 >= len(uid_range):
        raise SandboxError(f"--sandbox-uids holds {len(uid_range)} uids: too few for "
                           f"{index + 1} executors (two each)")
    return uid_range[2 * index], uid_range[2 * index + 1]


def resolve_mode(requested: str, is_root: bool | None = None) -> str:
    """``auto`` → ``uid`` as root, else ``namespaces``; other modes as given."""
    if requested not in MODES:
        raise SandboxError(f"--sandbox must be one of {', '.join(MODES)}, got {requested!r}")
    if requested != "auto":
        return requested
    root = os.geteuid() == 0 if is_root is None else is_root
    return "uid" if root else "namespaces"


def describe(mode: str) -> str:
    """One line on what ``mode`` contains and what it does not (logged at start-up)."""
    if mode == "uid":
        return ("uid: per-slot uids (two, alternating) + new user/pid/mount/ipc/uts/cgroup "
                "namespaces; repo, Node and shim read-only; private /tmp and HOME; process, "
                "file and open-file limits; network shared")
    if mode == "namespaces":
        limits = ("file and open-file limits; NO process-count limit (uid 0 is exempt: use uid)"
                  if os.geteuid() == 0 else "process, file and open-file limits")
        return ("namespaces: new user/pid/mount/ipc/uts/cgroup namespaces, same uid as the pool; "
                f"repo, Node and shim read-only; private /tmp and HOME; {limits}; network shared")
    return ("none: shims run as the pool's own uid with its view of the machine: a hostile job "
            "can read the worker secret and other runs' credentials")


# --- building the command ------------------------------------------------------------------------


@dataclass
class SandboxFiles:
    """Files an executor makes once for its sandboxes: passwd and group naming its uids."""

    root: str = ""
    passwd: str = ""
    group: str = ""

    @staticmethod
    def make(home: str, parent: str | None = None) -> SandboxFiles:
        """In a new folder under ``parent`` (default: the system's temporary folder). They name
        the shim's own user (``SHIM_UID`` inside every sandbox), root and nobody; the host's
        users stay hidden."""
        root = tempfile.mkdtemp(prefix="poolctl-sandbox-", dir=parent)
        os.chmod(root, 0o755)  # a slot uid must reach them to bind them
        users, groups = ["root:x:0:0:root:/root:/usr/sbin/nologin"], ["root:x:0:"]
        users.append(f"{SHIM_USER}:x:{SHIM_UID}:{SHIM_GID}:poolctl shim:{home}:/usr/sbin/nologin")
        groups.append(f"{SHIM_USER}:x:{SHIM_GID}:")
        users.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
        groups.append("nogroup:x:65534:")
        files = SandboxFiles(root)
        files.passwd = files._write("passwd", users)
        files.group = files._write("group", groups)
        return files

    def _write(self, name: str, lines: list[str]) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(path, 0o644)
        return path

    def remove(self) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


@functools.cache
def tool(name: str) -> str:
    """The absolute path of a helper program (bwrap, setpriv), or SandboxError."""
    found = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin")
    if found is None:
        hint = "apt-get install bubblewrap" if name == "bwrap" else "apt-get install util-linux"
        raise SandboxError(f"{name} not found ({hint}), or choose another --sandbox")
    return found


def bind_plan(config: SandboxConfig, env: dict[str, str],
              read_only: Iterable[str]) -> list[tuple[str, str]]:
    """``(source, destination)`` of every path bound besides the system's: Node, the shim code,
    the repo (and what the caller adds), the extra CA file, the hosts file. In uid mode bwrap
    runs as the slot uid, so each source must be reachable by other users (o+x on every folder
    above it); ``probe`` says so at start-up when one is not."""
    plan: dict[str, str] = {}
    extra_ca = env.get("NODE_EXTRA_CA_CERTS")
    for path in (*read_only, *([extra_ca] if extra_ca else [])):
        if os.path.exists(path) and not any(_under(path, d) for d in SYSTEM_DIRS):
            plan.setdefault(path, path)
    if os.path.exists(config.hosts_file):
        plan[os.path.realpath(config.hosts_file)] = "/etc/hosts"
    return list(plan.items())


def bwrap_args(config: SandboxConfig, argv: list[str], env: dict[str, str],
               binds: list[tuple[str, str]], cwd: str, files: SandboxFiles,
               info_fd: int | None = INFO_FD, writable: Iterable[str] = ()) -> list[str]:
    """bwrap's command line around ``argv``: the namespaces and binds listed above. ``writable``
    folders are bound read-write: only the pool's own builds (the compile cache) ask for one."""
    args = [tool("bwrap"), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup", "--die-with-parent", "--new-session", "--disable-userns",
            "--uid", str(SHIM_UID), "--gid", str(SHIM_GID), "--hostname", "poolctl-shim"]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for name in ETC_FILES:
        path = os.path.join("/etc", name)
        if os.path.exists(path):  # a symlink into /run (resolv.conf) is bound by its target
            args += ["--ro-bind", os.path.realpath(path), path]
    args += ["--ro-bind", files.passwd, "/etc/passwd", "--ro-bind", files.group, "/etc/group"]
    # the private /tmp and HOME first: a repo or Node under /tmp is bound on top, not hidden
    size = str(config.tmp_mb * 1024 * 1024)
    args += ["--size", size, "--tmpfs", "/tmp"]
    home = env.get("HOME")
    if home and home != "/tmp":
        args += ["--size", size, "--tmpfs", home]
    for source, dest in binds:
        args += ["--ro-bind", source, dest]
    for path in writable:  # after the read-only binds: a folder inside the repo, made writable
        args += ["--bind", path, path]
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", cwd, "--"]
    return args + argv


def wrap(config: SandboxConfig, argv: list[str], env: dict[str, str],
         binds: list[tuple[str, str]], cwd: str, files: SandboxFiles, uid: int | None,
         info_fd: int | None = INFO_FD, writable: Iterable[str] = ()) -> list[str]:
    """The full command for one shim: ``argv`` itself in ``none`` mode, else the chain
    ``[setpriv (uid mode)] bwrap … argv`` (the limits are set without a program of their own:
    ``impose_limits``). (``oom_score_adj`` needs no program of
    its own: the executor raised its own, and every shim inherits it — ``raise_oom_score``.)"""
    if config.mode == "none":
        return list(argv)
    chain = bwrap_args(config, argv, env, binds, cwd, files, info_fd, writable)
    if config.mode == "uid":
        if uid is None:
            raise SandboxError("uid mode without a uid for this shim")
        chain = [tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--no-new-privs", "--pdeathsig=KILL", "--", *chain]
    return chain


def shim_uid(mode: str) -> int:
    """The uid a shim's Node sees in sandbox ``mode`` (``uid``, ``namespaces`` or ``none``),
    which Node names its compile cache after."""
    return SHIM_UID if mode in SANDBOXED else os.getuid()


def limit_values(config: SandboxConfig) -> list[tuple[int, int]]:
    """``(resource, value)`` of every limit a sandbox's processes carry (soft = hard)."""
    return [(resource.RLIMIT_NPROC, config.pids), (resource.RLIMIT_NOFILE, config.nofile),
            (resource.RLIMIT_FSIZE, config.fsize_mb * 1024 * 1024)]


def impose_limits(config: SandboxConfig, pid: int = 0) -> None:
    """Set the sandbox's limits on process ``pid`` (0: this one), soft and hard alike, so a job
    cannot raise them again. OSError when the kernel refuses.

    Where it is called decides what the task count counts. The kernel counts tasks per uid *per
    user namespace* and checks every level up: a namespace remembers its creator's
    RLIMIT_NPROC as the bound of the level above it. So:

    - ``uid`` mode: the executor (root) sets them on itself once; root's own forks are exempt
      from RLIMIT_NPROC, and every shim inherits them through setpriv and bwrap. The slot uid
      runs nothing but this one sandbox, so its count is the sandbox's at both levels.
    - ``namespaces`` mode: the executor's uid is the pool's, shared by every executor and shim,
      so the limit cannot sit on the executor (its own spawns would count the whole pool). It
      is set on the shim once the shim is ready and before any run is handed to it (only the
      shim's own code has run by then), after bwrap made the user namespace: the count is the
      sandbox's alone. Same uid, so no privilege is needed.
    """
    for kind, value in limit_values(config):
        resource.prlimit(pid, kind, (value, value))


def raise_oom_score(path: str = "/proc/self/oom_score_adj") -> None:
    """Make this process, and so every shim it starts (the value is inherited across fork,
    exec and setuid), the OOM killer's first choice, so it never picks the supervisor. Raising
    it needs no privilege, and a job cannot lower it again (that needs CAP_SYS_RESOURCE). Done
    once by the executor instead of a ``choom`` exec in each shim's start-up chain."""
    with contextlib.suppress(OSError), open(path, "w", encoding="ascii") as fh:
        fh.write(str(OOM_SCORE_ADJ))


def _under(path: str, root: str) -> bool:
    return not os.path.islink(root) and (path == root or path.startswith(root.rstrip("/") + "/"))


# --- is it available? -----------------------------------------------------------------------------


def probe(config: SandboxConfig, node: str, repo_dir: str, timeout: float = 20.0) -> None:
    """Start ``node --version`` in the sandbox ``config`` describes, with the binds a shim gets;
    SandboxError with bwrap's or setpriv's own words when it cannot run."""
    if config.mode == "none":
        return
    if config.mode == "uid" and os.geteuid() != 0:
        raise SandboxError("--sandbox uid needs the pool to run as root (use namespaces)")
    node_path = shutil.which(node)
    if node_path is None:
        raise SandboxError(f"Node.js binary not found: {node!r}")
    node_path = os.path.realpath(node_path)
    try:  # on a fresh machine the repo does not exist yet; the pool would create it anyway
        os.makedirs(repo_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise SandboxError(f"cannot create the adaptor repo {repo_dir}: {exc.strerror}") from None
    home = "/tmp/poolctl-probe-home"
    uid = config.uids[0] if config.mode == "uid" and config.uids else None
    files = SandboxFiles.make(home)
    env = {"HOME": home, "PATH": "/usr/bin:/bin"}
    try:
        argv = wrap(config, [node_path, "--version"], env,
                    bind_plan(config, env, [node_path, SHIM_DIR, repo_dir]), repo_dir, files, uid,
                    info_fd=None)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"the {config.mode} sandbox cannot start: {exc}") from None
    finally:
        files.remove()
    if done.returncode != 0 or not done.stdout.startswith("v"):
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        if "Permission denied" in why and config.mode == "uid":
            why += (" (uid mode: Node, the shim code and the adaptor repo must be readable by "
                    "other users, with o+x on every folder above them; /root is not)")
        raise SandboxError(f"the {config.mode} sandbox cannot start: {why}")



def choose(requested: str, isolation: str, node: str, repo_dir: str,
           base: SandboxConfig) -> tuple[SandboxConfig, str | None]:
    """The sandbox a pool runs with, checked by starting one: ``(config, warning or None)``.

    An explicit mode that cannot work raises SandboxError (exit 2). ``auto`` that cannot work
    falls back to ``none`` with a warning — except under ``strict``, whose operators read it as
    "tenants are kept apart": then it refuses too, unless ``--sandbox none`` says otherwise.
    """
    if isolation == "noop":  # no shims at all
        return replace(base, mode="none"), None
    mode = resolve_mode(requested)
    config = replace(base, mode=mode)
    if mode == "none":
        warning = None
        if isolation == "strict":
            warning = ("--sandbox none: strict runs each job in a fresh shim but NOT in a "
                       "sandbox; a hostile job can read the worker secret and other runs' data")
        return config, warning
    try:
        probe(config, node, repo_dir)
    except SandboxError as exc:
        if requested != "auto":
            raise
        if isolation == "strict":
            raise SandboxError(f"strict isolation needs a sandbox and {exc}; pass --sandbox "
                               "none to run strict without one") from None
        return replace(base, mode="none"), f"no sandbox ({exc}): running with --sandbox none"
    return config, None


def base_config(settings: Any, slot: int = 0) -> SandboxConfig:
    """The sandbox settings of ``settings`` (mode not yet resolved), with slot ``slot``'s uids."""
    uids: tuple[int, ...] = ()
    if resolve_mode(settings.sandbox) == "uid":
        try:
            uids = slot_uids(parse_uid_range(settings.sandbox_uids), slot)
        except ValueError as exc:
            raise SandboxError(f"--sandbox-uids: {exc}") from None
    return SandboxConfig(mode=settings.sandbox, uids=uids, tmp_mb=settings.sandbox_tmp_mb,
                         pids=settings.sandbox_pids, nofile=settings.sandbox_nofile,
                         fsize_mb=settings.sandbox_fsize_mb,
                         hosts_file=settings.sandbox_hosts_file or "/etc/hosts")
