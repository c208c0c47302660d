"""The Python side of the Node shim: start it, talk to it over fd 3, read what it prints.

Public API (the executor process uses this; the protocol is pool/shim/PROTOCOL.md)::

    class ShimBootError(Exception)   # one-line reason: no node, broken shim, boot timeout
    class ShimExited(Exception)      # .returncode, .stderr_tail, .oom (heap out of memory)
    class Shim(node, memory_mb, env, repo_dir, script=None, launcher=None)  # launcher: the sandbox seam
        .start()                         # spawn; returns at once
        .wait_ready(timeout) -> dict     # the shim's `ready` message, else ShimBootError
        .pid: int
        .warm(adaptors, timeout) -> dict # the `warmed` reply (+ "output": lines printed meanwhile)
        .start_run(message)              # send a `run` message (its "type" is set here)
        .next_event(timeout) -> dict | None
            # the next protocol message, or {"type": "output", "stream": "stdout"|"stderr",
            # "line": str, "time_us": int} per line the shim printed; None on timeout;
            # raises ShimExited once the process is gone and everything it sent was delivered
        .rss_bytes() -> int              # every process in its sandbox
        .kill()                          # SIGKILL the whole sandbox; returns once all are gone
        .kill_strays() -> int            # context: kill all in the sandbox but the shim
        .close()                         # ask it to exit (graceful), then kill; frees fds

Every shim is started through ``pool.executor.launcher`` (the sandbox seam): the protocol socket
lands on fd 3, stdin is /dev/null, stdout/stderr are piped. The shim is told the repo folder as
its argument and makes it its working directory. ``pid`` is the process we spawned (bwrap
when sandboxed); ``kill`` takes the whole sandbox down, every process in it.

Ordering: a line printed by a job and a protocol event travel on different pipes. Lines read in
one poll are queued before protocol messages of that poll, and the output pipes are drained
once more before a ``run-complete`` is handed out, so a run's printed lines reach the caller
before its end.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import shutil
import socket
import time
from typing import Any

from pool.executor.launcher import Launcher, SandboxProcess
from pool.executor.sandbox import SHIM_DIR, SandboxConfig, SandboxError
from pool.executor.shim_watch import is_alive

SHIM_SCRIPT = os.path.join(SHIM_DIR, "shim.mjs")
PROTOCOL_FD = 3
STDERR_TAIL = 30
READ_SIZE = 1 << 16
OOM_MARKER = "heap out of memory"


class ShimBootError(Exception):
    """The shim could not start: the message is one line saying why."""


class ShimExited(Exception):
    """The shim process is gone (crash, OOM, process.exit, kill)."""

    def __init__(self, returncode: int | None, stderr_tail: list[str]) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.oom = any(OOM_MARKER in line for line in stderr_tail)
        last = stderr_tail[-1] if stderr_tail else "no output"
        super().__init__(f"shim exited with code {returncode}: {last}")


def node_flags(memory_mb: int) -> list[str]:
    """The Node flags a shim starts with (Node's compile cache is keyed by them)."""
    return ["--experimental-vm-modules", "--no-warnings", f"--max-old-space-size={memory_mb}"]


def now_us() -> int:
    return time.time_ns() // 1000


class Shim:
    """One Node shim process, driven synchronously from one thread."""

    def __init__(self, node: str, memory_mb: int, env: dict[str, str], repo_dir: str,
                 script: str | None = None, launcher: Launcher | None = None,
                 writable: tuple[str, ...] = ()) -> None:
        """``writable``: folders this shim may write through its sandbox (the compile-cache
        build's cache folder; a run's shim gets none)."""
        self.node = node
        self.launcher = launcher or Launcher(SandboxConfig(), env.get("HOME", "/tmp"))
        self.writable = writable
        self.process: SandboxProcess | None = None
        self._gone = False
        self.memory_mb = memory_mb
        self.env = dict(env)
        self.repo_dir = repo_dir
        self.script = script or SHIM_SCRIPT  # or the pool's one-file bundle of it (prepare.py)
        self.pid: int = 0
        self.returncode: int | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._sock: socket.socket | None = None
        self._selector: selectors.DefaultSelector | None = None
        self._buffers: dict[str, bytearray] = {}
        self._fds: dict[str, int] = {}
        self._open: set[str] = set()
        self._events: collections.deque[dict[str, Any]] = collections.deque()

    # ---- lifecycle -----------------------------------------------------------------------------

    def argv(self) -> list[str]:
        return [self.node, *node_flags(self.memory_mb), self.script, self.repo_dir]

    def start(self) -> None:
        """Spawn the shim with fd 3 = our socketpair, stdin /dev/null, stdout/stderr piped."""
        executable = shutil.which(self.node, path=self.env.get("PATH") or os.environ.get("PATH"))
        if executable is None:
            raise ShimBootError(f"node binary not found: {self.node}")
        executable = os.path.realpath(executable)
        if not os.path.isdir(self.repo_dir):
            with contextlib.suppress(OSError):
                os.makedirs(self.repo_dir, exist_ok=True)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY)
        fds = [(devnull, 0), (out_w, 1), (err_w, 2), (child.fileno(), PROTOCOL_FD)]
        argv = [executable, *self.argv()[1:]]
        try:
            self.process = self.launcher.spawn(argv, self.env,
                                               [executable, SHIM_DIR, self.repo_dir],
                                               self.repo_dir, fds, self.writable)
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            parent.close()
            raise ShimBootError(f"cannot start {executable}: {exc.strerror}") from None
        except SandboxError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            parent.close()
            raise ShimBootError(str(exc)) from None
        finally:
            for fd in (out_w, err_w, devnull):
                os.close(fd)
            child.close()
        self.pid = self.process.pid
        parent.setblocking(False)
        self._sock = parent
        self._fds = {"stdout": out_r, "stderr": err_r, "protocol": parent.fileno()}
        self._selector = selectors.DefaultSelector()
        for name, fd in self._fds.items():
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ, name)
            self._buffers[name] = bytearray()
            self._open.add(name)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Block until the shim says ``ready``; ShimBootError with its last stderr line if not."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise ShimBootError(f"shim did not become ready within {timeout:g}s"
                                    f"{self._last_stderr(': ')}")
            try:
                event = self.next_event(remaining)
            except ShimExited as exc:
                raise ShimBootError(f"shim exited during boot (code {exc.returncode})"
                                    f"{self._last_stderr(': ')}") from None
            if event and event.get("type") == "ready":
                try:
                    if self.process is not None:
                        self.launcher.confine(self.process)
                except SandboxError as exc:
                    self.kill()
                    raise ShimBootError(str(exc)) from None
                return event

    def alive(self) -> bool:
        """Node itself is still running. A sandboxed shim's ``pid`` is bubblewrap's, which
        outlives a killed Node by a few milliseconds: then the sandbox's pid 1 must still have
        a live child (the shim). Unreadable: taken as alive, as the pid check alone was."""
        if not is_alive(self.pid):
            return False
        init = self.process.init_pid if self.process is not None else None
        if init is None:
            return True
        try:
            children = self.process.init_children()
        except (OSError, ValueError):
            return is_alive(init)
        return any(is_alive(child) for child in children)

    def kill(self) -> None:
        """SIGKILL the shim's whole sandbox, reap it, and wait until every process the shim
        started is gone (idempotent)."""
        if self.process is None:
            return
        if self.returncode is None:
            self.process.kill()
            deadline = time.monotonic() + 2.0  # bwrap follows its sandbox's pid 1 at once
            while self.returncode is None and time.monotonic() < deadline:
                self._reap(block=False)
                if self.returncode is None:
                    time.sleep(0.002)
            if self.returncode is None:
                self.process.kill_child()
                self._reap(block=True)
        if not self._gone:
            self._gone = self.process.wait_gone()

    def kill_strays(self) -> int:
        """Kill every process in the sandbox but the shim (context mode, after a run): how many
        there were. SandboxError if they keep coming back."""
        return self.process.kill_strays() if self.process is not None else 0

    def close(self) -> None:
        """Ask the shim to exit, give it a moment, kill it if needed, release every fd."""
        if self.pid and self.returncode is None:
            with contextlib.suppress(OSError):
                self._send({"type": "exit"})
            deadline = time.monotonic() + 5
            while self.returncode is None and time.monotonic() < deadline:
                self._reap(block=False)
                time.sleep(0.02)
            self.kill()
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for name, fd in list(self._fds.items()):
            if name != "protocol":
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds = {}
        self._open.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.process is not None and self._gone:
            self.launcher.release(self.process)  # its uid is free for the next shim
            self.process = None

    def rss_bytes(self) -> int:
        """Resident memory of the shim now, with every process in its sandbox (0 if gone)."""
        return self.process.rss_bytes() if self.process is not None else 0

    # ---- messages ------------------------------------------------------------------------------

    def warm(self, adaptors: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
        """Import ``adaptors`` now; returns the ``warmed`` reply plus lines printed meanwhile."""
        self._send({"type": "warm", "adaptors": adaptors})
        deadline = time.monotonic() + timeout
        output: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ShimBootError(f"shim did not finish warming within {timeout:g}s")
            event = self.next_event(remaining)
            if event is None:
                continue
            if event["type"] == "warmed":
                return {**event, "output": output}
            if event["type"] == "output":
                output.append(event["line"])

    def start_run(self, message: dict[str, Any]) -> None:
        """Send one ``run`` message (PROTOCOL.md); events then come from ``next_event``."""
        self._send({**message, "type": "run"})

    def next_event(self, timeout: float | None) -> dict[str, Any] | None:
        """The next event (see the module doc); None when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            if not self._open:
                self._reap_within(5.0)
                raise ShimExited(self.returncode, list(self.stderr_tail))
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._poll(remaining)
            if not self._events and deadline is not None and time.monotonic() >= deadline:
                return None
        return self._events.popleft()

    # ---- internals -----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._sock is None:
            raise ShimExited(self.returncode, list(self.stderr_tail))
        data = (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        self._sock.setblocking(True)
        try:
            self._sock.sendall(data)
        except OSError:
            self._reap(block=False)
            raise ShimExited(self.returncode, list(self.stderr_tail)) from None
        finally:
            self._sock.setblocking(False)

    def _poll(self, timeout: float | None) -> None:
        """Read whatever is ready; output lines first, then protocol messages."""
        assert self._selector is not None
        ready = {key.data for key, _ in self._selector.select(timeout)}
        for name in ("stdout", "stderr"):
            if name in ready:
                self._read(name)
        if "protocol" in ready:
            messages = self._read("protocol")
            if any(m.get("type") == "run-complete" for m in messages) or "protocol" not in self._open:
                self._drain_output()
            self._events.extend(messages)
            if "protocol" not in self._open:  # the shim is going: what it printed is all read
                for name in list(self._open):
                    self._selector.unregister(self._fds[name])
                    self._open.discard(name)

    def _drain_output(self) -> None:
        """Take every line already printed; if the protocol pipe closed, read output to EOF."""
        assert self._selector is not None
        closing = "protocol" not in self._open
        deadline = time.monotonic() + (2.0 if closing else 0)
        while self._open - {"protocol"}:
            wait = max(0.0, deadline - time.monotonic())
            ready = {key.data for key, _ in self._selector.select(wait)}
            ready &= {"stdout", "stderr"}
            if not ready:
                break
            for name in ready:
                self._read(name)

    def _read(self, name: str) -> list[dict[str, Any]]:
        fd = self._fds[name]
        try:
            chunk = os.read(fd, READ_SIZE) if name != "protocol" else self._sock.recv(READ_SIZE)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        buf = self._buffers[name]
        if chunk:
            buf += chunk
        else:
            assert self._selector is not None
            self._selector.unregister(fd)
            self._open.discard(name)
            if buf:
                buf += b"\n"  # a last line without newline still counts
        messages: list[dict[str, Any]] = []
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl]).decode("utf-8", "replace")
            del buf[:nl + 1]
            if name == "protocol":
                message = self._decode(line)
                if message is not None:
                    messages.append(message)
            else:
                line = line.rstrip("\r")
                if name == "stderr":
                    self.stderr_tail.append(line)
                self._events.append({"type": "output", "stream": name, "line": line,
                                     "time_us": now_us()})
        return messages

    def _decode(self, line: str) -> dict[str, Any] | None:
        if not line.strip():
            return None
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.stderr_tail.append(f"(bad protocol frame from shim: {line[:200]})")
            return None
        return message

    def _reap(self, block: bool) -> None:
        if not self.pid or self.returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.returncode = -1
            return
        if pid == self.pid:
            code = os.waitstatus_to_exitcode(status)
            if self.process is not None and self.process.sandboxed and 128 < code < 160:
                code = 128 - code  # bwrap reports a signal death as 128+N: say it as Popen does
            self.returncode = code

    def _reap_within(self, seconds: float) -> None:
        """Wait for the exit of a shim that closed its end; kill it if it lingers."""
        deadline = time.monotonic() + seconds
        while self.returncode is None and time.monotonic() < deadline:
            self._reap(block=False)
            if self.returncode is None:
                time.sleep(0.01)
        self.kill()

    def _last_stderr(self, prefix: str) -> str:
        lines = [line for line in self.stderr_tail if line.strip()]
        return f"{prefix}{lines[-1].strip()}" if lines else ""
