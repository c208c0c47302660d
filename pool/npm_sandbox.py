"""npm in a sandbox of its own: of the whole machine it may change only the adaptor repo.

Every shim of every tenant loads what is in the repo, so whatever may write there decides what
runs next (DESIGN.md's threat model: the pool writes it, a shim only reads). npm already runs
with ``--ignore-scripts``, so no package code runs at install; the sandbox is for what remains —
npm itself or its tar extraction mishandling a hostile tarball, an npm configuration that points
elsewhere — so that at worst the repo is spoiled, never the shim code, the pool's Python, the
operator's files or other repos.

With bubblewrap (``bwrap``, Debian's ``bubblewrap``) npm runs in new user, mount, PID, IPC, UTS
and cgroup namespaces (the network shared: it must reach the registry), dying with its parent,
in a new session, and sees:

* ``/`` read-only (Node, npm, CA certificates, DNS configuration, the operator's npm proxy
  settings in ``/etc``);
* a private, empty ``/tmp`` and ``HOME`` (so nothing of the user's files; their ``~/.npmrc``,
  which holds the registry and proxy settings, is put back read-only, and so is a Node install
  under ``HOME`` such as nvm's);
* the repo, read-write — the one place anything it does is kept. npm's cache is kept there
  (``<repo>/.npm-cache``), since the real ``HOME`` is out of reach.

Without ``bwrap`` (or where the host forbids the namespaces it needs) npm runs as before,
unsandboxed, and a warning says so once per process.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("pool.adaptors")

BWRAP = "bwrap"
CACHE_DIR = ".npm-cache"
_usable: dict[str, str | None] = {}  # bwrap path → None if usable, else why not
_warned = False


def bwrap_problem(bwrap: str = BWRAP) -> str | None:
    """Why bwrap cannot sandbox npm here (not installed, namespaces refused), or None. Probed
    once per process: a trivial sandbox is started and must exit 0."""
    path = shutil.which(bwrap)
    if path is None:
        return f"{bwrap} is not installed (Debian: apt-get install bubblewrap)"
    if path not in _usable:
        try:
            probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--share-net",
                                    "--die-with-parent", "true"], capture_output=True, text=True,
                                   timeout=30, check=False)
            why = None if probe.returncode == 0 else (
                f"{path} cannot make a sandbox here: {probe.stderr.strip() or probe.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"{path} cannot make a sandbox here: {exc}"
        _usable[path] = why
    return _usable[path]


def _rebinds(hidden: list[Path], paths: list[Path]) -> list[str]:
    """Read-only binds for what npm needs from under the hidden folders (``HOME``, ``/tmp``):
    the top folder holding each, e.g. ``~/.nvm`` for a Node installed by nvm."""
    binds: list[str] = []
    for path in paths:
        for root in hidden:
            try:
                relative = path.relative_to(root)
            except ValueError:
                continue
            top = root / relative.parts[0] if relative.parts else None
            if top is not None and top.exists() and str(top) not in binds:
                binds += ["--ro-bind", str(top), str(top)]
    return binds


def sandboxed(cmd: list[str], repo_dir: Path, env: dict[str, str],
              bwrap: str | None = None) -> tuple[list[str], dict[str, str]]:
    """``cmd`` (npm) and its environment, wrapped so that only ``repo_dir`` is writable; the
    command unchanged (and a warning, once) when bwrap cannot be used."""
    global _warned
    bwrap = bwrap or BWRAP
    env = dict(env, npm_config_cache=str(repo_dir / CACHE_DIR))
    problem = bwrap_problem(bwrap)
    if problem is not None:
        if not _warned:
            _warned = True
            log.warning("npm runs without a sandbox: %s; an npm or tarball exploit could then "
                        "change files outside the adaptor repo", problem)
        return cmd, env
    home = Path(env.get("HOME") or Path.home()).absolute()
    npm = shutil.which(cmd[0], path=env.get("PATH"))
    node = shutil.which("node", path=env.get("PATH"))
    needed = [Path(p).resolve() for p in (npm, node) if p]
    npmrc = Path(env.get("npm_config_userconfig") or env.get("NPM_CONFIG_USERCONFIG")
                 or home / ".npmrc")
    wrapper = [shutil.which(bwrap) or bwrap, "--unshare-all", "--share-net", "--die-with-parent",
               "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp"]
    hidden = [Path("/tmp")]
    if home != Path("/") and home.is_dir() and home not in hidden:
        wrapper += ["--tmpfs", str(home)]
        hidden.append(home)
        if npmrc.is_file():
            wrapper += ["--ro-bind", str(npmrc), str(npmrc)]
    wrapper += _rebinds(hidden, needed)
    wrapper += ["--bind", str(repo_dir), str(repo_dir), "--chdir", str(repo_dir), "--"]
    return wrapper + cmd, env
