"""The executor process: boot a shim, then take runs one at a time over the executor protocol.

Lifecycle: read ``init`` → check the repo and Node → boot the mode's shim(s) → ``ready`` → per
``run``: resolve/install its adaptors, hand it to a shim (``pool.executor.drive``), forward the
events, dispose of the shim as the isolation mode says (``recycled`` when a warm shim is
replaced) → ``ready`` again. An idle shim that dies is seen when it dies (``shim_watch``):
``shim-lost`` tells the supervisor the executor is not ready, the shim is replaced
(``recycled``, cause ``crash``), then ``ready`` again. ``stop`` exits 0; EOF on the socket (the supervisor is gone) exits
at once. A boot failure is one line on stderr and a ``boot-failed`` {reason} message, then exit
code 3, so the supervisor stops respawning instead of looping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

from pool.executor import noop, protocol
from pool.executor.config import ConfigError, ExecutorConfig, Limits
from pool.executor.drive import RunDriver, RunEnd, ShimLostBeforeRun, send_run_complete
from pool.executor.handle import BOOT_FAILED
from pool.executor.inbox import EOF, MESSAGE, SHIM_DIED, WAKE, Inbox
from pool.executor.shim_watch import ShimWatch

MB = 1024 * 1024
DEFAULT_STATE_PROPS_TO_REMOVE = ("configuration", "response")  # ws-worker's default
PREPARED_MODES = ("strict", "context")  # cold stays the plain baseline


class BootFailure(Exception):
    """The executor cannot serve runs at all; the message is the one-line reason."""


class SupervisorGone(Exception):
    """The socket to the supervisor is closed: nobody is left to report to."""


class Executor:
    def __init__(self, sock: socket.socket, inbox: Inbox, config: ExecutorConfig) -> None:
        self.sock = sock
        self.inbox = inbox
        self.config = config
        self.mode: Any = None
        self.repo: Any = None
        self.factory: Any = None
        self.home = ""
        self.launcher: Any = None
        self.ready_pending = True
        self.recycled: list[dict[str, Any]] = []
        self.stopping = False
        self.watch: ShimWatch | None = None

    # --- talking to the supervisor -----------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        try:
            protocol.send(self.sock, message)
        except OSError as exc:
            raise SupervisorGone(str(exc)) from None

    # --- boot ------------------------------------------------------------------------------------------
    def boot(self) -> None:
        """Everything ``ready`` promises; BootFailure with the reason otherwise."""
        if self.config.isolation == "noop":
            return
        # imported here: noop mode must run where Node and the shim driver are absent
        from pool.adaptors import AdaptorError, AdaptorRepo
        from pool.executor.environment import refused_names, shim_env
        from pool.executor.isolation import Cold, Context, ShimFactory, Strict
        from pool.executor.launcher import Launcher
        from pool.executor.shim import ShimBootError, ShimExited

        cfg = self.config
        node = shutil.which(cfg.node)
        if node is None:
            raise BootFailure(f"Node.js binary not found: {cfg.node!r} (set --node)")
        self._check_repo(cfg.repo_dir)
        for name in refused_names(cfg.env_allowlist):
            print(f"executor: {name} is not passed to shims: WORKER_* variables never are",
                  file=sys.stderr, flush=True)
        self.home = tempfile.mkdtemp(prefix="poolctl-shim-home-")
        try:
            self.repo = AdaptorRepo(cfg.repo_dir, offline=cfg.offline,
                                    install_timeout=cfg.install_timeout,
                                    latest_ttl=cfg.latest_ttl, allowlist=cfg.allowlist)
        except AdaptorError as exc:
            raise BootFailure(str(exc)) from None
        self.launcher = Launcher(cfg.sandbox, self.home)
        memory = cfg.limits.memory_mb
        factory = ShimFactory(node, cfg.repo_dir, shim_env(os.environ, cfg.env_allowlist,
                                                           self.home),
                              self.repo, cfg.boot_timeout, cfg.prewarm,
                              prepare=cfg.prepare and cfg.isolation in PREPARED_MODES,
                              memory_mb=memory, launcher=self.launcher)
        self.factory = factory
        if cfg.isolation == "strict":
            self.mode = Strict(factory, memory, self.inbox.wake)
        elif cfg.isolation == "context":
            r = cfg.recycle
            self.mode = Context(factory, memory, r.runs, r.jitter, r.rss_mb)
        else:
            self.mode = Cold(factory, memory)
        try:
            self.mode.boot()
        except (ShimBootError, ShimExited) as exc:
            raise BootFailure(f"the Node shim did not start: {_one_line(exc)}") from None
        self.watch = ShimWatch(self.inbox.shim_died)

    @staticmethod
    def _check_repo(repo_dir: str) -> None:
        try:
            os.makedirs(repo_dir, exist_ok=True)
        except OSError as exc:
            raise BootFailure(f"adaptor repo {repo_dir} cannot be created: "
                              f"{exc.strerror}") from None
        if not os.path.isdir(repo_dir):
            raise BootFailure(f"adaptor repo {repo_dir} is not a directory")
        if not os.access(repo_dir, os.R_OK | os.X_OK):
            raise BootFailure(f"adaptor repo {repo_dir} is not readable")

    # --- the loop --------------------------------------------------------------------------------------
    def serve(self) -> int:
        try:
            while not self.stopping:
                self._maybe_ready()
                self._watch_idle_shim()
                item = self.inbox.get()
                assert item is not None
                kind, message = item
                if kind == EOF:
                    return protocol.EXIT_OK
                if kind == WAKE:
                    continue
                if kind == SHIM_DIED:
                    self._replace_dead_shim(message)
                    continue
                assert kind == MESSAGE
                self._handle(message)
            return protocol.EXIT_OK
        except SupervisorGone:
            return protocol.EXIT_OK

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == protocol.RUN:
            self.execute(message)
            self.ready_pending = True
        elif kind == protocol.STOP:
            self.stopping = True
        elif kind == protocol.CANCEL:
            print(f"executor: cancel for run {message.get('run_id')!r}, which is not running",
                  file=sys.stderr, flush=True)
        else:
            print(f"executor: ignoring unexpected message {kind!r} while idle",
                  file=sys.stderr, flush=True)

    def _watch_idle_shim(self) -> None:
        """Watch the shim that will take the next run while the executor waits."""
        if self.watch is not None and self.mode is not None:
            idle = self.mode.idle()
            self.watch.watch(idle.pid if idle is not None else None)

    def _replace_dead_shim(self, pid: int) -> None:
        """The idle shim died: not ready until a new one is warm (a run handed over meanwhile
        waits for it in ``take``)."""
        from pool.executor.isolation import CRASH
        from pool.executor.shim import ShimBootError, ShimExited

        idle = self.mode.idle() if self.mode is not None else None
        if idle is None or idle.pid != pid:
            return  # already replaced, or taken by a run (which checks it itself)
        print(f"executor: the idle shim (pid {pid}) died; replacing it", file=sys.stderr,
              flush=True)
        self.send({"type": protocol.SHIM_LOST, "shim_pid": pid})
        try:
            self.mode.replace_idle()
        except (ShimBootError, ShimExited) as exc:
            raise BootFailure(f"the replacement shim did not start: {_one_line(exc)}") from None
        self.recycled.append({"type": protocol.RECYCLED, "cause": CRASH, "old_shim_pid": pid})
        self.ready_pending = True

    def _maybe_ready(self) -> None:
        if not self.ready_pending or self.stopping:
            return
        if self.mode is not None:
            from pool.executor.shim import ShimBootError

            try:
                if not self.mode.is_ready():
                    return
            except ShimBootError as exc:
                raise BootFailure(f"the standby shim did not start: {_one_line(exc)}") from None
        idle = self.mode.idle() if self.mode is not None else None
        if idle is not None and not idle.shim.alive():  # e.g. a standby killed during a run
            self._replace_dead_shim(idle.pid)
            return
        for recycled in self.recycled:
            self.send(dict(recycled, new_shim_pid=idle.pid if idle else None))
        self.recycled.clear()
        self.send(self.ready_message(idle))
        self.ready_pending = False

    def ready_message(self, idle: Any) -> dict[str, Any]:
        info = self.mode.factory.info if self.mode is not None else noop.VERSIONS
        return {"type": protocol.READY, "pid": os.getpid(),
                "shim_pid": idle.pid if idle is not None else None,
                "node": info.get("node"), "runtime": info.get("runtime"),
                "compiler": info.get("compiler"), "isolation": self.config.isolation,
                "sandbox": self.config.sandbox.mode,
                "warm_adaptors": list(idle.warm_adaptors) if idle is not None else []}

    # --- one run -----------------------------------------------------------------------------------------
    def execute(self, message: dict[str, Any]) -> None:
        run_id = message.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            send_run_complete(self.send, run_id, RunEnd(
                "exception", "ExecutionError", "run message without a run_id"))
            return
        try:
            plan, input_state, limits, options = self._read_run(message)
        except ValueError as exc:
            send_run_complete(self.send, run_id, RunEnd("exception", "ExecutionError",
                                                        f"invalid run message: {exc}"))
            return
        if self.mode is None:
            props = options.get("state_props_to_remove") or []
            for event in noop.replay(run_id, plan, input_state, props):
                self.send(event)
            return
        self._execute_on_shim(run_id, plan, input_state, limits, options)

    def _read_run(self, message: dict[str, Any]) -> tuple[dict[str, Any], Any, Limits,
                                                            dict[str, Any]]:
        plan = message.get("plan")
        if not isinstance(plan, dict):
            raise ValueError("plan must be an object")
        steps = (plan.get("workflow") or {}).get("steps") if isinstance(
            plan.get("workflow"), dict) else None
        if not isinstance(steps, list) or not steps:
            raise ValueError("plan.workflow.steps must be a non-empty list")
        input_state = message.get("input")
        if input_state is None:
            input_state = {}
        try:
            limits = self.config.limits.merged(message.get("limits"))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        options = {"state_props_to_remove": list(DEFAULT_STATE_PROPS_TO_REMOVE),
                   **self.config.options}
        options.update({k: v for k, v in (message.get("options") or {}).items()
                        if v is not None})
        return plan, input_state, limits, options

    def _execute_on_shim(self, run_id: str, plan: dict[str, Any], input_state: Any,
                         limits: Limits, options: dict[str, Any]) -> None:
        from pool.adaptors import AdaptorError
        from pool.executor.isolation import adaptor_dict

        specs = list(dict.fromkeys(
            spec for step in plan["workflow"]["steps"] if isinstance(step, dict)
            for spec in (step.get("adaptors") or []) if isinstance(spec, str)))
        adaptors = {}
        for spec in specs:
            try:
                adaptors[spec] = adaptor_dict(self.factory.form(self.repo.resolve(spec)))
            except AdaptorError as exc:
                text = _one_line(exc)
                if not text.startswith("Error "):
                    text = f"Error installing {spec}: {text}"
                send_run_complete(self.send, run_id, RunEnd("exception", "AutoinstallError", text))
                return
        taken = self._take_shim(run_id, limits, specs)
        if taken is None:
            return
        shim, dedicated = taken
        shim_message = {
            "type": "run", "run_id": run_id, "plan": plan, "input": input_state,
            "adaptors": {spec: {k: v for k, v in a.items() if k != "specifier"}
                         for spec, a in adaptors.items()},
            "options": {
                "state_props_to_remove": options["state_props_to_remove"],
                "job_log_level": options.get("job_log_level"),
                "sanitize": options.get("sanitize"),
                "payload_limit_mb": limits.payload_mb,
                "log_payload_limit_mb": limits.log_payload_mb,
                "state_limit_mb": limits.memory_mb * 0.25,
                "cache_key": self.mode.cache_key(run_id),
            },
        }
        driver = RunDriver(shim.shim, run_id, limits, self.send, self.inbox)
        try:
            end = driver.drive(shim_message, may_retry=True)
        except ShimLostBeforeRun as lost:
            print(f"executor: shim {shim.pid} died before it read run {run_id} ({lost}); "
                  "a fresh shim takes the run", file=sys.stderr, flush=True)
            self._dispose(shim, dedicated, "crash")
            taken = self._take_shim(run_id, limits, specs)
            if taken is None:
                return
            shim, dedicated = taken
            driver = RunDriver(shim.shim, run_id, limits, self.send, self.inbox)
            end = driver.drive(shim_message)
        self._dispose(shim, dedicated, end.recycle)
        if driver.stop_requested:
            self.stopping = True
        if driver.supervisor_gone:
            raise SupervisorGone("the supervisor closed the socket during a run")

    def _take_shim(self, run_id: str, limits: Limits, specs: list[str]) -> tuple[Any, bool] | None:
        """The mode's shim for the run; None once the run was reported (no shim could start)."""
        from pool.executor.shim import ShimBootError, ShimExited

        try:
            return self.mode.take(limits.memory_mb, specs)
        except (ShimBootError, ShimExited) as exc:
            send_run_complete(self.send, run_id, RunEnd(
                "exception", "ExecutionError", f"could not start a shim: {_one_line(exc)}"))
            return None

    def _dispose(self, shim: Any, dedicated: bool, recycle: str | None) -> None:
        """Hand a shim back to the mode after a run; a replaced one is reported ``recycled``."""
        cause = self.mode.finish(shim, dedicated, recycle)
        if cause is not None:
            self.recycled.append({"type": protocol.RECYCLED, "cause": cause,
                                  "old_shim_pid": shim.pid})

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self.mode is not None:
            self.mode.close()
        if self.launcher is not None:
            self.launcher.close()
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def boot_failed(sock: socket.socket, reason: str) -> int:
    """Report a boot failure both ways (stderr and a last message) and give exit code 3."""
    reason = " ".join(reason.split())
    print(f"poolctl executor: boot failed: {reason}", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        protocol.send(sock, {"type": BOOT_FAILED, "reason": reason})
    return protocol.EXIT_BOOT_FAILURE


def main(fd: int) -> int:
    """Serve the supervisor on the inherited socket ``fd``; returns the exit code."""
    # the inherited fd must not leak into the shims we spawn: a shim holding it would keep the
    # supervisor's end open after this executor dies, hiding the death from the supervisor
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    inbox = Inbox(sock)
    first = inbox.get()
    assert first is not None
    kind, message = first
    if kind == EOF:
        return protocol.EXIT_OK
    if kind != MESSAGE or message.get("type") != protocol.INIT:
        return boot_failed(sock, f"the first message must be init, got {message.get('type')!r}")
    try:
        config = ExecutorConfig.from_message(message)
    except ConfigError as exc:
        return boot_failed(sock, f"bad init message: {exc}")
    executor = Executor(sock, inbox, config)
    try:
        try:
            executor.boot()
            return executor.serve()
        except BootFailure as exc:
            return boot_failed(sock, str(exc))
    finally:
        executor.close()
