"""Isolation modes: which shim takes a run, and what happens to it afterwards.

``strict`` (the default): every run gets a fresh shim that was started and pre-warmed (with the
adaptors most recently used) while the previous run executed; after the run that shim is
discarded. No run can observe what an earlier one left: globals, live timers, adaptor module
state including its dependencies (a lodash mixin made through language-common's ``_``),
``process.env`` changes, credentials held in closures. The price is one warm shim booting per
run, in the background; the executor reports ``ready`` only once a standby is warm.

``context``: one warm shim takes every run, with a fresh vm context per step and a per-run
adaptor ``cache_key`` (a fresh adaptor entry module), and the shim's per-run reset (timers,
console). For trusted workloads; the fastest. Documented leaks from one run to the next in the
same shim (see openfn-engine.md §7.4 and §8.1):

- module state of a plain adaptor's *dependencies* (e.g. ``_.mixin`` on language-common's
  lodash), which the cache key does not renew (a prepared adaptor is one file, its dependencies
  inlined, so the cache key renews them too; only what it reaches through ``require``, mostly
  Node built-ins, stays shared);
- changes adaptor or job code makes to the host realm: ``process.env``, host globals reached
  through ``process``/constructors, patched built-in modules;
- sockets and keep-alive agents opened by adaptors;
- memory (vm.SourceTextModule leaks ~150 KB per run, nodejs/node #59118).
Jobs' own globals and their timers do not leak (fresh context; the shim clears timers). The
shim is recycled after ``recycle.runs`` runs plus random jitter, when its idle RSS is above
``recycle.rss_mb``, and after any crash, timeout, OOM or cancel.

``cold``: a fresh shim started when the run arrives, discarded after it: the baseline the
warm modes are measured against.

A run asking for more memory than the warm shim was started with (``--max-old-space-size``)
gets a fresh shim of its own in every mode; the warm one stays for the next run.
"""

from __future__ import annotations

import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pool.adaptors import Adaptor, AdaptorError, AdaptorRepo
from pool.executor.launcher import Launcher
from pool.executor.prepared import PreparedForms
from pool.executor.sandbox import SandboxError, shim_uid
from pool.executor.shim import Shim, ShimBootError
from pool.prepare import is_prepared

# why a shim was replaced: the ``recycled`` message's ``cause``
RUNS, RSS, CRASH, TIMEOUT, OOM, CANCEL = "runs", "rss", "crash", "timeout", "oom", "cancel"
MB = 1024 * 1024


@dataclass
class WarmShim:
    """A booted shim and what we know about it."""

    shim: Shim
    memory_mb: int
    info: dict[str, Any]
    warm_adaptors: list[str] = field(default_factory=list)
    runs: int = 0

    @property
    def pid(self) -> int:
        return self.shim.pid

    def discard(self) -> None:
        self.shim.kill()
        self.shim.close()


class ShimFactory:
    """Starts shims the same way for every mode: minimal env, repo as cwd, limits as flags.

    With ``prepare`` (strict and context, ``--prepare-adaptors``), shims load each adaptor's
    prepared form once the pool has made it, and boot with Node's compile cache when one built
    for them exists (``pool.executor.prepared``)."""

    def __init__(self, node: str, repo_dir: str, env: dict[str, str], repo: AdaptorRepo,
                 boot_timeout: float, prewarm: tuple[str, ...], prepare: bool = False,
                 memory_mb: int = 0, launcher: Launcher | None = None) -> None:
        self.node = node
        self.launcher = launcher
        self.repo_dir = repo_dir
        self.env = env
        self.repo = repo
        self.boot_timeout = boot_timeout
        self.prewarm = list(prewarm)
        self.info: dict[str, Any] = {}  # the last shim's ``ready``: node and runtime versions
        self.forms: PreparedForms | None = None
        if prepare:
            self.forms = PreparedForms(repo, node, memory_mb, self._build_cache,
                                       self._check_shim,
                                       uid=shim_uid(launcher.mode if launcher else "none"))

    def form(self, adaptor: Adaptor) -> Adaptor:
        """The adaptor as this factory's shims load it (prepared, or plain)."""
        return self.forms.form(adaptor) if self.forms is not None else adaptor

    def boot(self, memory_mb: int, adaptors: list[str]) -> WarmShim:
        """A started, ready shim with ``adaptors`` imported; ShimBootError if it cannot start."""
        env, script = self.env, None
        if self.forms is not None:
            script = self.forms.script()
            env = {**env, **self.forms.shim_env(memory_mb, script)}
        shim = Shim(self.node, memory_mb, env, self.repo_dir, script, self.launcher)
        try:
            shim.start()
            info = shim.wait_ready(self.boot_timeout)
            self.info = info
            if self.forms is not None:
                self.forms.learn(info)
            warm = WarmShim(shim, memory_mb, info)
            if adaptors:
                warm.warm_adaptors = self._warm(shim, adaptors)
        except BaseException:
            shim.kill()
            shim.close()
            raise
        return warm

    def _warm(self, shim: Shim, specifiers: list[str]) -> list[str]:
        found: list[dict[str, Any]] = []
        for spec in dict.fromkeys(specifiers):
            try:
                adaptor = self.repo.resolve(spec)
            except AdaptorError as exc:  # a bad prewarm entry costs speed, never a boot
                print(f"executor: cannot pre-warm {spec}: {exc}", file=sys.stderr, flush=True)
                continue
            found.append(adaptor_dict(self.form(adaptor)))
        if not found:
            return []
        reply = shim.warm(found, self.boot_timeout)
        for error in reply.get("errors") or []:
            print(f"executor: pre-warming {error.get('specifier')} failed: "
                  f"{error.get('message')}", file=sys.stderr, flush=True)
        return list(reply.get("adaptors") or [])


    def _build_cache(self, memory_mb: int, extra_env: dict[str, str],
                     adaptors: list[Adaptor], script: str) -> None:
        """Boot a shim exactly as :meth:`boot` does plus ``extra_env``, import ``adaptors``,
        and let it exit normally: Node writes its compile cache then."""
        # in the shims' own sandbox (same inner uid, paths and flags, so Node names and keys
        # the cache as they will look it up), with only the cache folder writable
        launcher = self.launcher.builder() if self.launcher is not None else None
        shim = Shim(self.node, memory_mb, {**self.env, **extra_env}, self.repo_dir, script,
                    launcher, writable=(extra_env["NODE_COMPILE_CACHE"],))
        try:
            shim.start()
            shim.wait_ready(self.boot_timeout)
            reply = shim.warm([adaptor_dict(a) for a in adaptors], self.boot_timeout)
            for error in reply.get("errors") or []:
                raise ShimBootError(f"{error.get('specifier')}: {error.get('message')}")
        finally:
            shim.close()


    def _check_shim(self, script: str) -> None:
        """Boot a shim from ``script`` and run a job on it; raises if it cannot serve runs."""
        shim = Shim(self.node, self.forms.memory_mb if self.forms else 256, self.env,
                    self.repo_dir, script)
        try:
            shim.start()
            shim.wait_ready(self.boot_timeout)
            shim.start_run({
                "run_id": "shim-check", "input": {"data": {"n": 1}},
                "plan": {"id": "shim-check", "options": {}, "workflow": {"steps": [
                    {"id": "a", "expression": "export default [s => ({ data: { n: s.data.n + 1 }"
                                              " })];", "configuration": {}}]}},
                "adaptors": {}, "options": {"payload_limit_mb": 10, "log_payload_limit_mb": 1},
            })
            deadline = time.monotonic() + self.boot_timeout
            while time.monotonic() < deadline:
                event = shim.next_event(max(0.0, deadline - time.monotonic()))
                if event is not None and event["type"] == "run-complete":
                    if event.get("reason") != "success" or '"n":2' not in str(
                            event.get("final_state")):
                        raise ShimBootError(f"its test job ended {event.get('reason')}: "
                                            f"{event.get('error_message')}")
                    return
            raise ShimBootError("its test job did not finish")
        finally:
            shim.close()


def adaptor_dict(adaptor: Adaptor) -> dict[str, Any]:
    return {"specifier": adaptor.specifier, "name": adaptor.name, "version": adaptor.version,
            "path": adaptor.path, "prepared": is_prepared(adaptor)}


class Standby:
    """Boots the next shim on a long-lived thread while the current run executes.

    Long-lived on purpose: a shim may carry PR_SET_PDEATHSIG, which fires when the *thread* that
    spawned it exits. ``notify`` wakes the executor's loop when a boot finishes.
    """

    def __init__(self, factory: ShimFactory, notify: Callable[[], None]) -> None:
        self._factory = factory
        self._notify = notify
        self._requests: queue.Queue[tuple[int, list[str]] | None] = queue.Queue()
        self._done = threading.Event()
        self._result: WarmShim | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="standby", daemon=True)
        self._thread.start()

    def request(self, memory_mb: int, adaptors: list[str]) -> None:
        self._done.clear()
        self._result = self._error = None
        self._requests.put((memory_mb, adaptors))

    @property
    def is_warm(self) -> bool:
        return self._done.is_set() and self._result is not None

    @property
    def failed(self) -> bool:
        return self._done.is_set() and self._error is not None

    def wait(self, timeout: float) -> None:
        """Wait for the shim asked for last; raises its boot error (and forgets it)."""
        if not self._done.wait(timeout):
            raise ShimBootError(f"the standby shim was not ready within {timeout:g}s")
        if self._error is not None:
            error, self._error = self._error, None
            self._done.clear()
            raise error

    def take(self, timeout: float) -> WarmShim:
        """The shim asked for last, waiting for it; raises its boot error."""
        self.wait(timeout)
        assert self._result is not None
        shim, self._result = self._result, None
        self._done.clear()
        return shim

    def peek(self) -> WarmShim | None:
        return self._result if self._done.is_set() else None

    def close(self) -> None:
        self._requests.put(None)
        if self._done.is_set() and self._result is not None:
            self._result.discard()
            self._result = None

    def _loop(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            try:
                self._result = self._factory.boot(*request)
            except BaseException as exc:  # noqa: BLE001 - handed to the executor's loop
                self._error = exc
            self._done.set()
            self._notify()


class Mode:
    """What every isolation mode answers; the executor's loop drives it."""

    name = ""

    def boot(self) -> None:
        """Start what must exist before ``ready``; ShimBootError when Node cannot run."""

    def is_ready(self) -> bool:
        return True

    def idle(self) -> WarmShim | None:
        """The shim that will take the next run (for ``ready``), if there is one yet."""
        return None

    def take(self, memory_mb: int, adaptors: list[str]) -> tuple[WarmShim, bool]:
        """``(shim, dedicated)`` for a run, checked alive; a dedicated shim is discarded after
        it."""
        raise NotImplementedError

    def replace_idle(self) -> None:
        """The idle shim died: start its replacement (``is_ready`` says when it is warm)."""

    def cache_key(self, run_id: str) -> str | None:
        return run_id

    def finish(self, shim: WarmShim, dedicated: bool, cause: str | None) -> str | None:
        """Dispose of a shim after its run; the ``recycled`` cause when the warm one was replaced."""
        raise NotImplementedError

    def close(self) -> None:
        """Kill every shim."""


class Strict(Mode):
    name = "strict"

    def __init__(self, factory: ShimFactory, memory_mb: int, notify: Callable[[], None]) -> None:
        self.factory = factory
        self.memory_mb = memory_mb
        self.standby = Standby(factory, notify)
        self.recent: list[str] = list(factory.prewarm)
        self._retried = False

    def boot(self) -> None:
        self.standby.request(self.memory_mb, self.factory.prewarm)
        self.standby.wait(self.factory.boot_timeout * 2)

    def is_ready(self) -> bool:
        """True once the standby is warm. A standby that failed to boot is retried once (a
        transient fork failure); a second failure raises ShimBootError to the loop."""
        if self.standby.failed:
            try:
                self.standby.wait(0)
            except ShimBootError:
                if self._retried:
                    raise
                self._retried = True
                self.standby.request(self.memory_mb, self.recent)
            return False
        if self.standby.is_warm:
            self._retried = False
        return self.standby.is_warm

    def idle(self) -> WarmShim | None:
        return self.standby.peek()

    def replace_idle(self) -> None:
        if self.standby.peek() is not None:
            self.standby.take(0).discard()
        self.standby.request(self.memory_mb, self.recent)

    def cache_key(self, run_id: str) -> str | None:
        """None: the run imports each adaptor under the URL its standby already imported while
        warming, so the adaptor is not evaluated a second time (the shim is fresh anyway)."""
        return None

    def take(self, memory_mb: int, adaptors: list[str]) -> tuple[WarmShim, bool]:
        if memory_mb > self.memory_mb:
            return self.factory.boot(memory_mb, []), True
        try:
            shim = self.standby.take(self.factory.boot_timeout * 2)
        except ShimBootError:  # the standby failed: this run boots its own, the next retries
            shim = self.factory.boot(memory_mb, adaptors)
        if not shim.shim.alive():  # killed while the previous run executed: never hand it on
            _dead(shim)
            shim = self.factory.boot(memory_mb, adaptors)
        self.recent = list(dict.fromkeys([*self.factory.prewarm, *adaptors]))
        self.standby.request(self.memory_mb, self.recent)
        return shim, True

    def finish(self, shim: WarmShim, dedicated: bool, cause: str | None) -> str | None:
        shim.discard()
        return cause  # the shim was going anyway; a crash/timeout/OOM is still worth counting

    def close(self) -> None:
        self.standby.close()


class Context(Mode):
    name = "context"

    def __init__(self, factory: ShimFactory, memory_mb: int, runs: int, jitter: int,
                 rss_mb: int) -> None:
        self.factory = factory
        self.memory_mb = memory_mb
        self.runs, self.jitter, self.rss_mb = runs, jitter, rss_mb
        self.shim: WarmShim | None = None
        self.recent: list[str] = list(factory.prewarm)
        self._budget = 0

    def boot(self) -> None:
        self.shim = self.factory.boot(self.memory_mb, self.recent)
        self._budget = self.runs + random.randint(0, self.jitter)

    def idle(self) -> WarmShim | None:
        return self.shim

    def take(self, memory_mb: int, adaptors: list[str]) -> tuple[WarmShim, bool]:
        assert self.shim is not None
        if memory_mb > self.shim.memory_mb:
            return self.factory.boot(memory_mb, []), True
        if not self.shim.shim.alive():  # died since the watcher last looked
            _dead(self.shim)
            self.boot()
        self.recent = list(dict.fromkeys([*self.recent, *adaptors]))
        return self.shim, False

    def finish(self, shim: WarmShim, dedicated: bool, cause: str | None) -> str | None:
        if dedicated:
            shim.discard()
            return None
        if cause is None:
            cause = _kill_strays(shim)
        shim.runs += 1
        if cause is None and shim.runs >= self._budget:
            cause = RUNS
        if cause is None and _rss(shim) > self.rss_mb * MB:
            cause = RSS
        if cause is not None:
            shim.discard()
            self.shim = None
            self.boot()
        return cause

    def replace_idle(self) -> None:
        if self.shim is not None:
            self.shim.discard()
            self.shim = None
        self.boot()

    def close(self) -> None:
        if self.shim is not None:
            self.shim.discard()
            self.shim = None


class Cold(Mode):
    name = "cold"

    def __init__(self, factory: ShimFactory, memory_mb: int) -> None:
        self.factory = factory
        self.memory_mb = memory_mb

    def boot(self) -> None:
        self.factory.boot(self.memory_mb, []).discard()  # Node works: fail at boot, not per run

    def take(self, memory_mb: int, adaptors: list[str]) -> tuple[WarmShim, bool]:
        return self.factory.boot(memory_mb, []), True

    def finish(self, shim: WarmShim, dedicated: bool, cause: str | None) -> str | None:
        shim.discard()
        return None


def _dead(shim: WarmShim) -> None:
    """A shim found dead as a run was handed to it: reaped; a fresh one takes the run."""
    print(f"executor: shim {shim.pid} was dead when a run came; a fresh one takes it",
          file=sys.stderr, flush=True)
    shim.discard()


def _kill_strays(shim: WarmShim) -> str | None:
    """Nothing a run started outlives it: kill every process in the shim's sandbox but the shim;
    if they keep coming back, the shim goes too (``crash``)."""
    try:
        killed = shim.shim.kill_strays()
    except SandboxError as exc:
        print(f"executor: shim {shim.pid}: {exc}; replacing it", file=sys.stderr, flush=True)
        return CRASH
    if killed:
        print(f"executor: killed {killed} process(es) the last run left in shim {shim.pid}'s "
              "sandbox", file=sys.stderr, flush=True)
    return None


def _rss(shim: WarmShim) -> int:
    try:
        return shim.shim.rss_bytes()
    except Exception:  # noqa: BLE001 - a dead shim has no RSS; its death is reported elsewhere
        return 0
