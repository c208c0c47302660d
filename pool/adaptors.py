"""The adaptor repo: resolve adaptor specifiers to installed package folders, installing on demand.

Public API (used by the executor and by ``poolctl install``)::

    class AdaptorError(Exception)      # one readable line; install failures carry npm's reason
    @dataclass class Adaptor:          # specifier, name, version, path (the package folder)
    class AdaptorRepo(repo_dir, offline=False, install_timeout=120, latest_ttl=3600, npm="npm")
        .resolve(specifier) -> Adaptor                 # installs if needed (unless offline)
        .ensure(specifiers) -> dict[str, Adaptor]      # many at once, keyed by specifier
        .installed_versions(name) -> list[str]         # semver-sorted, lowest first
    def parse_specifier(specifier) -> (name, version | None)
    def install_command(specifiers, settings) -> int   # `poolctl install`

Layout (the same as @openfn/runtime's repo, so either can read the other's): ``<repo>/package.json``
is a private npm package; each adaptor version is installed under the alias ``<name>_<version>``
(``<repo>/node_modules/@openfn/language-http_7.2.10``), so several versions sit side by side.

Why a file lock: several executors and several ``poolctl`` processes share one repo, and two
``npm install`` runs in one folder corrupt it. Installs take ``fcntl.flock`` on
``<repo>/.poolctl.lock`` and re-check after taking it, so a version wanted by many processes at
once is installed once. Reads take no lock: an alias counts as installed only when both its
folder and its entry in the repo's ``package.json`` (written by npm last) exist.

Why a ``@latest`` cache: engine-multi runs ``npm view`` on every run (~0.5 s); the answer is
cached in ``<repo>/.poolctl-latest.json`` for ``latest_ttl`` seconds instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.npm_sandbox import sandboxed

ALLOWED_PREFIX = "@openfn/"
LOCK_FILE = ".poolctl.lock"
LATEST_FILE = ".poolctl-latest.json"
REPO_PACKAGE = {"name": "openfn-repo", "private": True, "dependencies": {}}
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
NAME = re.compile(r"^@openfn/[a-z0-9][a-z0-9._-]*$")
TAGS = ("latest", "next")
# npm lines that say nothing about why an install failed
NPM_NOISE = re.compile(r"A complete log of this run|^npm (error|ERR!) (code|errno|syscall)\b"
                       r"|^npm (error|ERR!)\s*$|^npm warn|^npm WARN")


class AdaptorError(Exception):
    """An adaptor that cannot be used: bad specifier, not allowed, not installed offline, npm failed.

    The message is one or a few readable lines; for install failures it ends with npm's reason.
    """


@dataclass(frozen=True)
class Adaptor:
    """One installed adaptor version. ``path`` is its package folder (what the linker wants)."""

    specifier: str
    name: str
    version: str
    path: str


def parse_specifier(specifier: str) -> tuple[str, str | None]:
    """Split ``@openfn/language-http@7.2.10`` into name and version (``None`` = latest).

    Only ``@openfn/*`` names are allowed (the jobs' import whitelist); versions are exact
    semver or a dist-tag (``latest``, ``next``), never ranges, so a run is reproducible.
    """
    spec = specifier.strip()
    at = spec.rfind("@")
    if at > 0:
        name, version = spec[:at], spec[at + 1:]
    else:
        name, version = spec, None
    if not name.startswith(ALLOWED_PREFIX):
        raise AdaptorError(f"adaptor {specifier!r} is not allowed: only {ALLOWED_PREFIX}* "
                           "adaptors can be installed and imported")
    if not NAME.match(name):
        raise AdaptorError(f"adaptor {specifier!r} has an invalid package name")
    if version in (None, "", "latest"):
        return name, None
    if version not in TAGS and not SEMVER.match(version):
        raise AdaptorError(f"adaptor {specifier!r}: the version must be exact (e.g. 1.2.3) or "
                           "'latest'")
    return name, version


class Allowlist:
    """The adaptors an operator permits on this worker (``WORKER_ADAPTOR_ALLOWLIST``).

    An entry is a name (every version of it) or ``name@version`` (that exact version). Checked
    when a run's adaptor is resolved, so a plan naming another adaptor fails its run before
    anything is installed, with the same kind of error as a failed install.
    """

    def __init__(self, entries: Sequence[str]) -> None:
        self.entries = tuple(entries)
        self.names: set[str] = set()
        self.versions: set[tuple[str, str]] = set()
        for entry in self.entries:
            name, version = parse_specifier(entry)  # AdaptorError for a bad entry
            if version is None:
                self.names.add(name)
            elif version in TAGS:
                raise AdaptorError(f"adaptor allowlist entry {entry!r}: name a version (1.2.3) "
                                   "or no version at all, not a tag")
            else:
                self.versions.add((name, version))

    def permits(self, name: str, version: str | None = None) -> bool:
        """With no version: whether some version of ``name`` may be used."""
        if not self.entries or name in self.names:
            return True
        if version is None:
            return any(n == name for n, _ in self.versions)
        return (name, version) in self.versions

    def check(self, specifier: str, name: str, version: str | None = None) -> None:
        if not self.permits(name, version):
            what = f"{name}@{version}" if version else specifier
            raise AdaptorError(f"Error installing {specifier}: {what} is not permitted on this "
                               f"worker (WORKER_ADAPTOR_ALLOWLIST: {', '.join(self.entries)})")


def semver_key(version: str) -> tuple[Any, ...]:
    """Sort key comparing versions as semver (7.10.0 > 7.9.0; 1.0.0 > 1.0.0-rc.1)."""
    m = SEMVER.match(version)
    if not m:
        return (-1, -1, -1, 0, ())
    major, minor, patch, pre = m.groups()
    if pre is None:
        pre_key: tuple[Any, ...] = ()
        is_release = 1
    else:
        pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
        is_release = 0
    return (int(major), int(minor), int(patch), is_release, pre_key)


def alias(name: str, version: str) -> str:
    return f"{name}_{version}"


class AdaptorRepo:
    """A shared npm folder of adaptors in the ``name_version`` alias layout."""

    def __init__(self, repo_dir: str, offline: bool = False, install_timeout: float = 120,
                 latest_ttl: float = 3600, npm: str = "npm",
                 allowlist: Sequence[str] = ()) -> None:
        """``allowlist``: the adaptors an operator permits (``name`` or ``name@version``);
        empty permits every ``@openfn/*`` adaptor."""
        self.allowlist = Allowlist(allowlist)
        self.repo_dir = Path(repo_dir).expanduser().absolute()
        self.offline = offline
        self.install_timeout = install_timeout
        self.latest_ttl = latest_ttl
        self.npm = npm

    # ---- reading -------------------------------------------------------------------------------

    def package_path(self, name: str, version: str) -> Path:
        return self.repo_dir / "node_modules" / alias(name, version)

    def _repo_dependencies(self) -> dict[str, Any]:
        try:
            with open(self.repo_dir / "package.json", encoding="utf-8") as fh:
                deps = json.load(fh).get("dependencies") or {}
        except (OSError, ValueError):
            return {}
        return deps if isinstance(deps, dict) else {}

    def is_installed(self, name: str, version: str) -> bool:
        return (alias(name, version) in self._repo_dependencies()
                and (self.package_path(name, version) / "package.json").is_file())

    def installed_versions(self, name: str) -> list[str]:
        prefix = f"{name}_"
        versions = [key[len(prefix):] for key in self._repo_dependencies()
                    if key.startswith(prefix)]
        versions = [v for v in versions if SEMVER.match(v)
                    and (self.package_path(name, v) / "package.json").is_file()]
        return sorted(versions, key=semver_key)

    # ---- resolving -----------------------------------------------------------------------------

    def resolve(self, specifier: str) -> Adaptor:
        """The installed adaptor for ``specifier``, installing it first if needed."""
        name, version = parse_specifier(specifier)
        self.allowlist.check(specifier, name)  # before any npm lookup
        if version is None or version in TAGS:
            version = self._resolve_tag(name, version or "latest")
        self.allowlist.check(specifier, name, version)
        if not self.is_installed(name, version):
            if self.offline:
                have = ", ".join(self.installed_versions(name)) or "none"
                raise AdaptorError(f"{name}@{version} is not installed in {self.repo_dir} and "
                                   f"the repo is offline (installed versions: {have})")
            self._install(name, version)
        return Adaptor(specifier, name, version, str(self.package_path(name, version)))

    def ensure(self, specifiers: list[str]) -> dict[str, Adaptor]:
        """Resolve many specifiers (duplicates once); the first failure raises."""
        out: dict[str, Adaptor] = {}
        for spec in specifiers:
            if spec not in out:
                out[spec] = self.resolve(spec)
        return out

    def _resolve_tag(self, name: str, tag: str) -> str:
        """Map a dist-tag to a version: the cache, else ``npm view``; offline: highest installed."""
        if self.offline:
            versions = self.installed_versions(name)
            if not versions:
                raise AdaptorError(f"{name}@{tag}: no version of {name} is installed in "
                                   f"{self.repo_dir} and the repo is offline")
            return versions[-1]
        key = f"{name}@{tag}"
        cache = self._read_latest_cache()
        entry = cache.get(key)
        if isinstance(entry, dict) and time.time() - entry.get("time", 0) < self.latest_ttl:
            return str(entry["version"])
        try:
            version = self._npm_view(name, tag)
        except AdaptorError:
            if isinstance(entry, dict):  # npm unreachable: a stale answer beats no answer
                return str(entry["version"])
            raise
        self._write_latest_cache(key, version)
        return version

    def _npm_view(self, name: str, tag: str) -> str:
        cmd = [self.npm, "view", f"{name}@{tag}", "version", "--json"]
        proc = self._run_npm(cmd, f"looking up {name}@{tag}")
        try:
            version = json.loads(proc.stdout or "null")
        except ValueError:
            version = None
        if isinstance(version, list):  # npm answers a list when a tag matches several
            version = max(version, key=semver_key) if version else None
        if not isinstance(version, str) or not SEMVER.match(version):
            raise AdaptorError(f"Error looking up {name}@{tag}: npm returned no version")
        return version

    def _read_latest_cache(self) -> dict[str, Any]:
        try:
            with open(self.repo_dir / LATEST_FILE, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_latest_cache(self, key: str, version: str) -> None:
        """Merge one answer into the cache under the lock; written atomically (rename)."""
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            cache = self._read_latest_cache()
            cache[key] = {"version": version, "time": time.time()}
            self._write_json_atomic(self.repo_dir / LATEST_FILE, cache)

    # ---- installing ----------------------------------------------------------------------------

    def ensure_repo(self) -> None:
        """Create the repo folder and its ``package.json`` if missing (as @openfn/runtime does)."""
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        pkg = self.repo_dir / "package.json"
        if not pkg.exists():
            self._write_json_atomic(pkg, REPO_PACKAGE)

    def _install(self, name: str, version: str) -> None:
        self.ensure_repo()
        with self._locked():
            if self.is_installed(name, version):  # another process did it while we waited
                return
            target = f"{alias(name, version)}@npm:{name}@{version}"
            cmd = [self.npm, "install", "--no-audit", "--no-fund", "--no-package-lock",
                   "--ignore-scripts", "--save-exact", "--loglevel=error", target]
            self._run_npm(cmd, f"installing {name}@{version}")
            if not self.is_installed(name, version):
                raise AdaptorError(f"Error installing {name}@{version}: npm finished but "
                                   f"{self.package_path(name, version)} is missing")

    def _run_npm(self, cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
        """npm in its sandbox (pool/npm_sandbox.py): only the repo is writable to it."""
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        if shutil.which(cmd[0]) is None:
            raise AdaptorError(f"Error {what}: npm not found ({self.npm})")
        cmd, env = sandboxed(cmd, self.repo_dir,
                             dict(os.environ, npm_config_update_notifier="false"))
        try:
            proc = subprocess.run(cmd, cwd=self.repo_dir, env=env, capture_output=True, text=True,
                                  timeout=self.install_timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise AdaptorError(f"Error {what}: npm not found ({self.npm})") from None
        except subprocess.TimeoutExpired:
            raise AdaptorError(f"Error {what}: npm took longer than "
                               f"{self.install_timeout:g}s") from None
        if proc.returncode != 0:
            raise AdaptorError(f"Error {what}: {npm_reason(proc.stderr, proc.returncode)}")
        return proc

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The repo's lock, for others that write into the repo (``pool.prepare``)."""
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        return self._locked()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.repo_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @staticmethod
    def _write_json_atomic(path: Path, data: Any) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the repo from shims of other uids
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)


def npm_reason(stderr: str, returncode: int) -> str:
    """The last meaningful lines of npm's stderr, prefixes stripped, joined on one line."""
    lines = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line or NPM_NOISE.search(line):
            continue
        line = re.sub(r"^npm (error|ERR!)\s*", "", line)
        if line:
            lines.append(line)
    if not lines:
        return f"npm exited with code {returncode}"
    return "; ".join(lines[-3:])


def install_command(specifiers: list[str], settings: Any) -> int:
    """``poolctl install ADAPTOR...``: pre-install each adaptor and say where it is."""
    repo = AdaptorRepo(settings.repo_dir, offline=settings.adaptors_offline,
                       install_timeout=settings.install_timeout, latest_ttl=settings.latest_ttl)
    status = 0
    for spec in specifiers:
        try:
            name, version = parse_specifier(spec)
            was_there = version is not None and version not in TAGS \
                and repo.is_installed(name, version)
            adaptor = repo.resolve(spec)
        except AdaptorError as exc:
            print(f"poolctl install: {exc}", file=sys.stderr)
            status = 1
            continue
        verb = "already installed" if was_there else "installed"
        print(f"{verb} {adaptor.name}@{adaptor.version} at {adaptor.path}")
        if getattr(settings, "prepare_adaptors", False):
            prepare_installed(repo, adaptor, getattr(settings, "node", "node"))
    return status


def prepare_installed(repo: AdaptorRepo, adaptor: Adaptor, node: str) -> None:
    """``poolctl install`` also prepares what it installed (``--no-prepare-adaptors``: not)."""
    from pool.prepare import PREPARED, PreparedRepo  # the prepared forms build on this module

    def say(line: str) -> None:
        print(f"poolctl install: {line}", file=sys.stderr)

    state = PreparedRepo(repo).prepare(adaptor, node, say)
    if state == PREPARED:
        print(f"prepared {adaptor.name}@{adaptor.version}")
