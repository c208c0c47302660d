"""The one seam every shim is started through: argv, environment, binds, credentials.

``Launcher.spawn`` takes what a shim needs — its argv, the environment built by
``pool.executor.environment`` (passed through as given: nothing is added or removed here), the
paths it must read (Node, the shim code, the whole adaptor repo: whatever other code prepares
under the repo is seen read-only without changes here) and the descriptors it inherits (the
protocol socket lands on fd 3) — and starts it inside the executor's sandbox
(``pool.executor.sandbox``). What comes back, a :class:`SandboxProcess`, is how the executor
reaches *everything* the shim started, not just the shim:

- ``rss_bytes`` sums every process in the sandbox (the sandbox's own ``/proc``, read through
  its pid 1's root), so a job's child process cannot hide its memory from the watchdog;
- ``kill`` SIGKILLs the sandbox's pid 1 (through a pidfd: no pid reuse race); the kernel then
  kills every other process in its PID namespace, detached grandchildren included, and
  ``wait_gone`` returns once they are all gone;
- ``kill_strays`` (``context`` mode, after each run) kills every process in the sandbox but
  its pid 1 and the shim.

In uid mode each executor slot owns two uids; a shim takes the one no live shim of this
executor holds (``UidPair``), so the running shim and the standby always differ.

Why ``posix_spawn``: the protocol fd must be exactly 3 in the child. Its dup2 file actions
place descriptors without ``preexec_fn`` (unsafe in a process with threads); every other
descriptor of ours is close-on-exec. The uid change and the death signal are done by a small
program in the exec chain (setpriv), for the same reason; the limits need no program at all
(``impose_limits``: on the executor itself in uid mode, on the ready shim in namespaces mode).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import replace

import psutil

from pool.executor.sandbox import (
    INFO_FD,
    SandboxConfig,
    SandboxError,
    SandboxFiles,
    bind_plan,
    impose_limits,
    wrap,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
INFO_TIMEOUT = 10.0
GONE_TIMEOUT = 5.0
SHIM_INNER_PID = 2  # bwrap's own init is pid 1 in the sandbox; the command it starts is pid 2


class UidPair:
    """This executor slot's two uids; ``take`` gives the one no live shim holds."""

    def __init__(self, uids: Iterable[int]) -> None:
        self.uids = tuple(uids)
        self._held: set[int] = set()
        self._lock = threading.Lock()  # the standby thread and the executor's loop both boot

    def take(self) -> int | None:
        if not self.uids:
            return None
        with self._lock:
            for uid in self.uids:
                if uid not in self._held:
                    self._held.add(uid)
                    return uid
        raise SandboxError(f"both uids of this slot ({self.uids}) are held by live shims")

    def give_back(self, uid: int | None) -> None:
        with self._lock:
            self._held.discard(uid)  # type: ignore[arg-type]


class SandboxProcess:
    """What ``Launcher.spawn`` started: ``pid`` is our child (bwrap, or the shim in ``none``)."""

    def __init__(self, pid: int, info_fd: int | None, uid: int | None) -> None:
        self.pid = pid
        self.uid = uid
        self.init_pid: int | None = None  # host pid of the sandbox's pid 1
        self._pidfd: int | None = None
        if info_fd is not None:
            self._read_info(info_fd)

    @property
    def sandboxed(self) -> bool:
        return self.init_pid is not None

    def _read_info(self, fd: int) -> None:
        """bwrap writes ``{"child-pid": N, ...}`` once the namespaces exist; hold a pidfd on N."""
        data = b""
        deadline = time.monotonic() + INFO_TIMEOUT
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    break
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
                try:
                    info = json.loads(data)
                except ValueError:
                    continue
                self.init_pid = int(info["child-pid"])
                with contextlib.suppress(OSError):
                    self._pidfd = os.pidfd_open(self.init_pid)
                return
        finally:
            os.close(fd)

    # --- reading --------------------------------------------------------------------------------
    def init_children(self) -> list[int]:
        """Host pids of the children of the sandbox's pid 1 (the shim, while it lives; a zombie
        stays listed until reaped). OSError/ValueError when they cannot be read."""
        with open(f"/proc/{self.init_pid}/task/{self.init_pid}/children", encoding="ascii") as fh:
            return [int(pid) for pid in fh.read().split()]

    def processes(self) -> list[int]:
        """Pids (as the sandbox numbers them) of every process in the sandbox; [] if gone."""
        if self.init_pid is None:
            return []
        try:
            names = os.listdir(f"/proc/{self.init_pid}/root/proc")
        except OSError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def rss_bytes(self) -> int:
        """Resident memory of every process in the sandbox (of the shim alone in ``none``)."""
        if self.init_pid is None:
            try:
                return int(psutil.Process(self.pid).memory_info().rss)
            except (psutil.Error, ValueError):
                return 0
        total = 0
        base = f"/proc/{self.init_pid}/root/proc"
        for pid in self.processes():
            try:
                with open(f"{base}/{pid}/statm", "rb") as fh:
                    total += int(fh.read().split()[1]) * PAGE
            except (OSError, IndexError, ValueError):
                continue
        return total

    # --- ending -------------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the whole sandbox: its pid 1 (the kernel takes every other process of the
        PID namespace with it), after which bwrap, our child, exits by itself and is reaped
        with their CPU time counted; without a sandbox, the shim itself."""
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                return
        self.kill_child()

    def kill_child(self) -> None:
        """SIGKILL the process we spawned (bwrap lingering after its sandbox died)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait_gone(self, timeout: float = GONE_TIMEOUT) -> bool:
        """After ``kill``, or after the shim exited: every process of the sandbox is gone
        (the pidfd of pid 1 reads as exited only once the namespace is empty)."""
        if self._pidfd is None:
            return True
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        ready, _, _ = select.select([self._pidfd], [], [], timeout)
        if ready:
            os.close(self._pidfd)
            self._pidfd = None
        return bool(ready)

    def kill_strays(self, rounds: int = 5) -> int:
        """Kill every process in the sandbox but pid 1 and the shim; how many there were.

        The sandbox's ``/proc`` says whether anything is left (cheap, every run); only then is
        the host's ``/proc`` searched for the host pids of that PID namespace. Raises
        SandboxError if processes keep appearing (the caller then discards the sandbox).
        """
        killed = 0
        for _ in range(rounds):
            strays = [p for p in self.processes() if p not in (1, SHIM_INNER_PID)]
            if not strays:
                return killed
            killed += self._kill_namespace_members(set(strays))
            time.sleep(0.01)
        if [p for p in self.processes() if p not in (1, SHIM_INNER_PID)]:
            raise SandboxError("processes left by the run keep coming back")
        return killed

    def _kill_namespace_members(self, inner: set[int]) -> int:
        try:
            ns = os.stat(f"/proc/{self.init_pid}/ns/pid").st_ino
        except OSError:
            return 0
        count = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{name}/ns/pid").st_ino != ns:
                    continue
                with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as fh:
                    nspid = next((line.split()[1:] for line in fh if line.startswith("NSpid:")),
                                 [])
            except OSError:
                continue
            if nspid and int(nspid[-1]) in inner:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(name), signal.SIGKILL)
                    count += 1
        return count

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class Launcher:
    """Starts an executor's shims in its sandbox; one per executor."""

    def __init__(self, config: SandboxConfig, home: str) -> None:
        self.config = config
        self.home = home
        self.uids = UidPair(config.uids if config.mode == "uid" else ())
        self.files: SandboxFiles | None = None
        if config.mode != "none":
            # inside the executor's own temporary folder, removed with it; a slot uid must be
            # able to pass through it to bind them
            os.chmod(home, 0o711)
            self.files = SandboxFiles.make(home, parent=home)
        if config.mode == "uid":
            impose_limits(config)  # inherited by every shim; root's own forks are exempt
        self._builder: Launcher | None = None

    def builder(self) -> Launcher:
        """A launcher for the pool's own builds (the compile cache): the shims' sandbox (same
        inner uid, paths and binds), but as the executor's own uid rather than a slot uid, so
        the files Node writes (0600, in 0700 folders) are the executor's to make readable to
        every slot's shims afterwards — root in a container may lack the capabilities to
        change another uid's files. A build runs the shim and the repo's adaptors, never a
        job: the executor already runs that code when it prepares an adaptor."""
        if self.config.mode != "uid":
            return self
        if self._builder is None:
            self._builder = Launcher(replace(self.config, mode="namespaces", uids=()), self.home)
        return self._builder

    @property
    def mode(self) -> str:
        return self.config.mode

    def spawn(self, argv: list[str], env: dict[str, str], read_only: Iterable[str], cwd: str,
              fds: list[tuple[int, int]], writable: Iterable[str] = ()) -> SandboxProcess:
        """Start ``argv`` with ``env`` (as given) and ``fds`` placed as ``(ours, child's)``.
        ``writable``: folders the process may write (the pool's own builds, through
        ``builder()``; never a run's shim)."""
        uid = self.uids.take()
        try:
            return self._spawn(argv, env, list(read_only), cwd, fds, uid, list(writable))
        except BaseException:
            self.uids.give_back(uid)
            raise

    def _spawn(self, argv: list[str], env: dict[str, str], read_only: list[str], cwd: str,
               fds: list[tuple[int, int]], uid: int | None,
               writable: list[str]) -> SandboxProcess:
        info_r = info_w = None
        plan = list(fds)
        if self.files is not None:
            info_r, info_w = os.pipe()
            plan.append((info_w, INFO_FD))
            command = wrap(self.config, argv, env, bind_plan(self.config, env, read_only), cwd,
                           self.files, uid, writable=writable)
        else:
            command = list(argv)
        # move every source above the targets first, so no dup2 overwrites a later source
        high = [fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 10) for src, _ in plan]
        actions = [(os.POSIX_SPAWN_DUP2, src, dst) for src, (_, dst) in zip(high, plan,
                                                                             strict=True)]
        try:
            pid = os.posix_spawn(command[0], command, env, file_actions=actions)
        finally:
            for fd in high:
                os.close(fd)
            if info_w is not None:
                os.close(info_w)
        return SandboxProcess(pid, info_r, uid)

    def confine(self, process: SandboxProcess) -> None:
        """Called once the shim is ready, before any run reaches it: in namespaces mode, set
        the sandbox's limits on every process in it (the shim; bwrap's pid 1 forks no more).
        SandboxError if the kernel refuses: a shim without its limits never takes a run."""
        if self.config.mode != "namespaces" or process.init_pid is None:
            return
        try:
            pids = process.init_children()
            if not pids:
                raise OSError("the shim has exited")
            for pid in (process.init_pid, *pids):
                impose_limits(self.config, pid)
        except (OSError, ValueError) as exc:
            raise SandboxError(f"could not set the sandbox's limits on the shim: {exc}") from None

    def release(self, process: SandboxProcess) -> None:
        """The shim is gone: its uid may be taken by the next one."""
        process.close()
        self.uids.give_back(process.uid)

    def close(self) -> None:
        if self._builder is not None:
            self._builder.close()
        if self.files is not None:
            self.files.remove()
