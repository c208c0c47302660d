"""Prepared adaptors: a one-file ESM bundle of each installed adaptor, and Node's compile cache.

Part of the adaptor repo (``pool/adaptors.py``): the pool writes these files into the repo, under
its lock, and shims only read them (DESIGN.md, "Threat model"). Why: a ``strict`` run boots a
fresh Node, and the plain adaptor import is hundreds of small module loads (~330 ms CPU for
language-common on Node 20); the same code as one file loads in about a third of that, and
Node's compile cache (Node ≥ 22) skips most of the compiling that is left.

Layout, all under the repo dir so a sandbox that sees the repo read-only sees them too::

    <repo>/.prepared/@openfn/language-common_3.3.4/
        adaptor.mjs     the bundle (esbuild, ESM, ``createRequire`` banner)
        package.json    {"type": "module", "exports": "./adaptor.mjs", name, version}: the folder
                        is a package, so the runtime's linker loads it like the plain one
        stamp.json      what it was made from; ``status`` "prepared" or "plain" (+ ``reason``)
    <repo>/.compile-cache/<key>/
        stamp.json      node, flags, uid, the prepared adaptors it covers
        v24.../         Node's own cache folder (named by version, V8 flags, uid)

The linker path is unchanged: the executor puts the prepared folder in the run message's
``path`` instead of the plain one, and the runtime imports ``<entry>?cache=<key>``. An ESM file
is cached by URL, query included, so a ``context`` run still gets a fresh module per run (all of
the adaptor's bundled dependencies too).

Preparing is off every run's path: the first run of an adaptor uses the plain package; the
executor then asks its :class:`Preparer` thread, which prepares it under the repo lock (another
executor may have done it meanwhile: the stamp is checked again under the lock). The stamp
records the adaptor's version and ``package.json`` time, esbuild's version and :data:`FORMAT`,
so a new esbuild or a reinstalled adaptor makes it again. A bundle whose export names or their
``typeof`` differ from the plain package's, that does not load, or that esbuild cannot make,
leaves the adaptor plain: the stamp says why and the reason is logged once, by the executor that
tried.

The compile cache is used only when it will be hit: Node names its cache folder by its version,
V8 flags (``--max-old-space-size`` included) and uid, and keys entries by absolute path. So the
cache is built by booting a shim with the very binary, flags, environment and paths a shim gets,
warming every prepared adaptor, and letting it exit; shims get ``NODE_COMPILE_CACHE`` only when
a cache built for their exact ``<key>`` covers every prepared adaptor. After a build the folder
is made read-only (which binds a pool that is not root; as root, issue 9's sandbox mounts the
repo read-only).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pool.adaptors import Adaptor, AdaptorRepo, alias

PREPARED_DIR = ".prepared"
CACHE_DIR = ".compile-cache"
STAMP = "stamp.json"
BUNDLE = "adaptor.mjs"
FORMAT = 1  # bump when prepare.mjs makes a different bundle
CACHE_FORMAT = 1  # bump when the cache is built differently
PREPARED, PLAIN = "prepared", "plain"
PREPARE_TIMEOUT_S = 180.0
SHIM_DIR = Path(__file__).resolve().parent / "shim"
PREPARE_SCRIPT = SHIM_DIR / "prepare.mjs"
COMPILE_CACHE_MIN_NODE = 22  # NODE_COMPILE_CACHE exists from 22.1


def is_prepared(adaptor: Adaptor) -> bool:
    """True when ``adaptor.path`` is a prepared folder (as :meth:`PreparedRepo.form` gives)."""
    parts = Path(adaptor.path).parts
    return len(parts) >= 3 and parts[-3] == PREPARED_DIR


@functools.cache
def esbuild_version() -> str | None:
    """The esbuild the shim's package installed (``npm ci`` in pool/shim), or None."""
    try:
        with open(SHIM_DIR / "node_modules" / "esbuild" / "package.json", encoding="utf-8") as fh:
            return str(json.load(fh)["version"])
    except (OSError, ValueError, KeyError):
        return None


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class PreparedRepo:
    """Where the prepared form of an installed adaptor lives, and whether it is usable."""

    def __init__(self, repo: AdaptorRepo) -> None:
        self.repo = repo
        self.root = repo.repo_dir / PREPARED_DIR
        self._stamps: dict[Path, tuple[int, dict[str, Any] | None]] = {}

    def folder(self, adaptor: Adaptor) -> Path:
        return self.root / alias(adaptor.name, adaptor.version)

    def wanted(self, adaptor: Adaptor) -> dict[str, Any]:
        """What a stamp must say for the prepared form to be current."""
        return {"format": FORMAT, "esbuild": esbuild_version(), "name": adaptor.name,
                "version": adaptor.version,
                "package_mtime_ns": _mtime_ns(Path(adaptor.path) / "package.json")}

    def stamp(self, adaptor: Adaptor) -> dict[str, Any] | None:
        """The folder's stamp, re-read only when its file changed (one stat per run)."""
        path = self.folder(adaptor) / STAMP
        mtime = _mtime_ns(path)
        cached = self._stamps.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, _read_json(path) if mtime else None)
            self._stamps[path] = cached
        return cached[1]

    def is_current(self, adaptor: Adaptor, stamp: dict[str, Any] | None) -> bool:
        if not stamp:
            return False
        wanted = self.wanted(adaptor)
        return all(stamp.get(k) == v for k, v in wanted.items())

    def state(self, adaptor: Adaptor) -> str | None:
        """``prepared``, ``plain`` (tried: stays plain) or None (not tried for this esbuild)."""
        stamp = self.stamp(adaptor)
        if not self.is_current(adaptor, stamp):
            return None
        assert stamp is not None
        return PREPARED if stamp.get("status") == PREPARED else PLAIN

    def form(self, adaptor: Adaptor) -> Adaptor:
        """The adaptor as a shim should load it: its prepared folder when there is a current
        one, else the plain package."""
        if self.state(adaptor) == PREPARED:
            return replace(adaptor, path=str(self.folder(adaptor)))
        return adaptor

    def prepared(self) -> list[Adaptor]:
        """Every adaptor of the repo with a current prepared form (for the compile cache)."""
        out = []
        for stamp_path in sorted(self.root.glob(f"*/*/{STAMP}")):
            stamp = _read_json(stamp_path)
            if not stamp or stamp.get("status") != PREPARED or "name" not in stamp:
                continue  # (the shim's own bundle, .shim/<key>/, has no name)
            name, version = str(stamp.get("name")), str(stamp.get("version"))
            plain = Adaptor(f"{name}@{version}", name, version,
                            str(self.repo.package_path(name, version)))
            if self.is_current(plain, stamp):
                out.append(replace(plain, path=str(stamp_path.parent)))
        return out

    # ---- making ----------------------------------------------------------------------------------

    def prepare(self, adaptor: Adaptor, node: str, log: Callable[[str], None]) -> str:
        """Make the prepared form of ``adaptor`` (under the repo lock); its state afterwards.

        Logs (once: only the process that tried) why an adaptor stays plain."""
        with self.repo.locked():
            if (state := self.state(adaptor)) is not None:
                return state
            target = self.folder(adaptor)
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(target.parent)
            work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
            try:
                result = self._bundle(adaptor, node, work)
                stamp = {**self.wanted(adaptor), "status": PLAIN, "time": time.time()}
                if result.get("ok"):
                    _write_json(work / "package.json", {
                        "name": adaptor.name, "version": adaptor.version, "private": True,
                        "type": "module", "exports": f"./{BUNDLE}",
                        "description": f"poolctl's prepared form of {adaptor.path}"})
                    stamp |= {"status": PREPARED, "bytes": result.get("bytes"),
                              "exports": len(result.get("exports") or {}),
                              "plain": adaptor.path}
                else:
                    (work / BUNDLE).unlink(missing_ok=True)
                    stamp["reason"] = str(result.get("reason") or "unknown")
                    log(f"adaptor {adaptor.name}@{adaptor.version} stays plain: "
                        f"{stamp['reason']}")
                _write_json(work / STAMP, stamp)
                for path in work.iterdir():
                    os.chmod(path, 0o644)
                os.chmod(work, 0o755)
                self._swap(work, target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            self._stamps.pop(target / STAMP, None)
            return PREPARED if stamp["status"] == PREPARED else PLAIN

    @staticmethod
    def _swap(work: Path, target: Path) -> None:
        """Put ``work`` where ``target`` is (a reader sees the old folder or the new one)."""
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=".old-"))
            os.rename(target, old / "x")
        os.rename(work, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _bundle(adaptor: Adaptor, node: str, out: Path) -> dict[str, Any]:
        return _run_prepare(node, {"package": adaptor.path, "out": str(out)}, out)


def _run_prepare(node: str, request: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run prepare.mjs; its JSON answer, or {ok: False, reason} when it could not answer."""
    if esbuild_version() is None:
        return {"ok": False, "reason": "esbuild is not installed (npm ci in pool/shim)"}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(out)}
    try:
        proc = subprocess.run([node, str(PREPARE_SCRIPT), json.dumps(request)],
                              capture_output=True, text=True, timeout=PREPARE_TIMEOUT_S,
                              env=env, stdin=subprocess.DEVNULL, cwd=str(out))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "reason": f"prepare.mjs did not finish: {exc}"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "reason": f"prepare.mjs failed (code {proc.returncode}): {tail}"}
    try:
        answer = json.loads(lines[-1])
    except ValueError:
        return {"ok": False, "reason": "prepare.mjs answered no JSON"}
    return answer if isinstance(answer, dict) else {"ok": False, "reason": "bad answer"}


class StampedFolder:
    """A folder of the pool's making whose ``stamp.json`` says what it holds; the stamp is
    re-read only when its file changes (another executor may rebuild the folder)."""

    folder: Path

    def __init__(self) -> None:
        self._stamp: tuple[int, dict[str, Any] | None] = (0, None)

    def stamp(self) -> dict[str, Any] | None:
        path = self.folder / STAMP
        mtime = _mtime_ns(path)
        if mtime != self._stamp[0]:
            self._stamp = (mtime, _read_json(path) if mtime else None)
        return self._stamp[1]

    def forget_stamp(self) -> None:
        self._stamp = (0, None)


class PreparedShim(StampedFolder):
    """The shim itself as one file (``<repo>/.prepared/.shim/<key>/shim.mjs``): its runtime,
    logger and compiler inlined, which a fresh Node loads in about half the CPU of their many
    files. Keyed by the shim's code and esbuild's version; used only once a shim booted from it
    said ``ready`` (``check``), else the plain shim.mjs stays, with the reason logged once."""

    def __init__(self, repo: AdaptorRepo) -> None:
        self.repo = repo
        key = hashlib.sha256(json.dumps([FORMAT, esbuild_version(), shim_code()])
                             .encode()).hexdigest()[:16]
        self.folder = repo.repo_dir / PREPARED_DIR / ".shim" / key
        super().__init__()

    def script(self) -> str | None:
        """The bundle's path when it is usable, else None (boot the plain shim.mjs)."""
        stamp = self.stamp()
        if stamp and stamp.get("status") == PREPARED:
            return str(self.folder / "shim.mjs")
        return None

    def prepare(self, node: str, check: Callable[[str], None], log: Callable[[str], None]) -> None:
        """Bundle the shim and boot it once (``check(script)`` raises if it cannot serve)."""
        with self.repo.locked():
            if self.stamp() is not None:
                return
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(self.folder.parent)
            work = Path(tempfile.mkdtemp(dir=self.folder.parent, prefix=".tmp-"))
            try:
                result = _run_prepare(node, {"shim": str(SHIM_DIR / "shim.mjs"),
                                             "out": str(work)}, work)
                stamp: dict[str, Any] = {"status": PLAIN, "esbuild": esbuild_version(),
                                         "time": time.time()}
                if result.get("ok"):
                    try:
                        check(str(work / "shim.mjs"))
                        stamp |= {"status": PREPARED, "bytes": result.get("bytes")}
                    except Exception as exc:  # noqa: BLE001 - any failure: stay plain, say why
                        result = {"reason": f"a shim booted from the bundle failed: {exc}"}
                if stamp["status"] != PREPARED:
                    (work / "shim.mjs").unlink(missing_ok=True)
                    stamp["reason"] = str(result.get("reason") or "unknown")
                    log(f"the shim stays plain: {stamp['reason']}")
                _write_json(work / STAMP, stamp)
                for path in work.iterdir():
                    os.chmod(path, 0o644)
                os.chmod(work, 0o755)
                PreparedRepo._swap(work, self.folder)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            self.forget_stamp()


class CompileCache(StampedFolder):
    """Node's compile cache for one way of starting a shim (binary, flags, uid)."""

    def __init__(self, repo: AdaptorRepo, node: str, flags: list[str], script: str,
                 uid: int) -> None:
        """``uid``: the uid the shims' Node sees (inside a sandbox, its inner uid)."""
        self.repo = repo
        self.node = os.path.realpath(node)
        self.flags = list(flags)
        self.script = script
        self.uid = uid
        try:
            st = os.stat(self.node)
            binary = f"{self.node}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            binary = self.node
        digest = hashlib.sha256(json.dumps([CACHE_FORMAT, binary, self.flags, self.uid,
                                            script, shim_code()])
                                .encode()).hexdigest()
        self.folder = repo.repo_dir / CACHE_DIR / digest[:16]
        super().__init__()

    def covers(self, adaptors: list[Adaptor]) -> bool:
        """True when the cache was built with every one of ``adaptors`` (prepared folders)."""
        stamp = self.stamp()
        if not stamp:
            return False
        built = set(stamp.get("adaptors") or [])
        return all(a.path in built for a in adaptors)

    def build(self, boot: Callable[[dict[str, str]], Any], adaptors: list[Adaptor]) -> None:
        """Boot a shim with ``NODE_COMPILE_CACHE`` set (``boot(extra_env)`` warms ``adaptors``
        and lets it exit normally, which is when Node writes the cache), then stamp the folder
        and make it read-only. Under the repo lock."""
        with self.repo.locked():
            if self.covers(adaptors):
                return
            self._remove_outdated()
            self.folder.mkdir(parents=True, exist_ok=True)
            _chmod_tree(self.folder, writable=True)
            (self.folder / STAMP).unlink(missing_ok=True)
            boot({"NODE_COMPILE_CACHE": str(self.folder)})
            _write_json(self.folder / STAMP, {
                "node": self.node, "flags": self.flags, "uid": self.uid, "script": self.script,
                "time": time.time(),
                "adaptors": [a.path for a in adaptors]})
            _chmod_tree(self.folder, writable=False)
            self.forget_stamp()

    def _remove_outdated(self) -> None:
        """Caches for this very launch (binary, flags, uid) made for an older shim or format:
        no shim will use them again."""
        for stamp_path in self.folder.parent.glob(f"*/{STAMP}"):
            folder = stamp_path.parent
            stamp = _read_json(stamp_path) or {}
            if folder != self.folder and [stamp.get("node"), stamp.get("flags"), stamp.get("uid"),
                                          stamp.get("script")] == [self.node, self.flags,
                                                                   self.uid, self.script]:
                _chmod_tree(folder, writable=True)
                shutil.rmtree(folder, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return {"NODE_COMPILE_CACHE": str(self.folder)}


def _remove_leftovers(folder: Path) -> None:
    """Work folders of a preparer that died (only lock holders make them; we hold it)."""
    for path in folder.iterdir():
        if path.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(path, ignore_errors=True)


@functools.cache
def shim_code() -> list[tuple[str, int]]:
    """The shim's own files and their times: a changed shim gets a cache of its own (Node
    would reject the old entries, and a shim would write new ones)."""
    files = [*SHIM_DIR.glob("*.mjs"), *SHIM_DIR.glob("compiler/*.mjs"),
             SHIM_DIR / "package-lock.json"]
    return [(str(f), _mtime_ns(f)) for f in sorted(files)]


def _chmod_tree(folder: Path, writable: bool) -> None:
    """Read-only (0555/0444) or writable again (0755/0644), the folder and all under it."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o644 if writable else 0o444)
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o755 if writable else 0o555)
    with contextlib.suppress(OSError):
        os.chmod(folder, 0o755 if writable else 0o555)


class Preparer:
    """A background thread of the executor: prepares adaptors it is asked for, one at a time,
    then rebuilds the compile cache to cover them. Never on a run's path; errors are logged."""

    def __init__(self, prepared: PreparedRepo, node: str,
                 build_cache: Callable[[list[Adaptor]], None] | None,
                 shim: PreparedShim | None = None,
                 check_shim: Callable[[str], None] | None = None) -> None:
        self.prepared = prepared
        self.node = node
        self.build_cache = build_cache
        self.shim = shim
        self.check_shim = check_shim
        self._asked: set[str] = set()
        self._cache_queued = False
        self._queue: queue.Queue[Adaptor | str | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._loop, name="preparer", daemon=True)
        self._thread.start()

    def want(self, adaptor: Adaptor) -> None:
        """Prepare ``adaptor`` if it was never tried (the first call per version counts)."""
        key = f"{adaptor.name}@{adaptor.version}"
        if key in self._asked:
            return
        self._asked.add(key)
        self._idle.clear()
        self._queue.put(adaptor)

    def want_cache(self) -> None:
        """Rebuild the compile cache if it does not cover every prepared adaptor (once queued
        at a time)."""
        if self._cache_queued:
            return
        self._cache_queued = True
        self._idle.clear()
        self._queue.put(None)

    def want_shim(self) -> None:
        """Bundle the shim itself (once)."""
        if self.shim is None or "shim" in self._asked:
            return
        self._asked.add("shim")
        self._idle.clear()
        self._queue.put("shim")

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            adaptor = self._queue.get()
            try:
                if adaptor == "shim":
                    if self.shim is not None and self.check_shim is not None:
                        self.shim.prepare(self.node, self.check_shim, _log)
                elif isinstance(adaptor, Adaptor):
                    self.prepared.prepare(adaptor, self.node, _log)
                if self.build_cache is not None and self._queue.empty():
                    self._cache_queued = False
                    self.build_cache(self.prepared.prepared())
            except Exception as exc:  # noqa: BLE001 - a background helper must not die
                what = adaptor.name if isinstance(adaptor, Adaptor) else \
                    adaptor or "the compile cache"
                _log(f"preparing {what} failed: "
                     f"{' '.join(str(exc).split()) or type(exc).__name__}")
            if self._queue.empty():
                self._idle.set()


def _log(text: str) -> None:
    print(f"executor: {text}", file=sys.stderr, flush=True)
