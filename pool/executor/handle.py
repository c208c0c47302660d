"""The supervisor's side of one executor: spawn it, talk the executor protocol, reap it.

An executor is a fresh interpreter (``python -m pool.executor --fd N``; fork + exec, never a
bare fork of a threaded supervisor) that inherits one end of a socketpair and starts with a
scrubbed environment (no ``WORKER_*`` variable). Its settings travel in the ``init`` message.

It dies with its parent two ways: it sets ``PR_SET_PDEATHSIG`` on itself at startup (which fires
when the *thread* that spawned it exits — spawn from a long-lived thread), and it exits when
its end of the socketpair reads EOF.

Used by the supervisor, ``poolctl execute``, the benchmark and the tests.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pool.executor import protocol
from pool.executor.environment import executor_env

# executor → supervisor: the last message of an executor that could not boot (then exit 3)
BOOT_FAILED = "boot-failed"
READ_SIZE = 256 * 1024


class ExecutorGone(Exception):
    """The executor closed its socket (it exited or was killed); ``reason`` says why."""

    def __init__(self, returncode: int | None, reason: str) -> None:
        super().__init__(reason)
        self.returncode = returncode
        self.reason = reason


class ExecutorBootError(Exception):
    """The executor could not boot (exit code 3 or a ``boot-failed`` message): a one-line reason."""


class ExecutorHandle:
    """One executor process and its socketpair end. Not thread-safe: one owner thread."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket,
                 on_output: Callable[[str], None] | None = None) -> None:
        self.proc = proc
        self.sock = sock
        self.pid = proc.pid
        self.output_tail: collections.deque[str] = collections.deque(maxlen=50)
        self.boot_failure: str | None = None
        self._reader = protocol.FrameReader()
        self._inbuf = bytearray(READ_SIZE)  # reused: a fresh large bytes per read is an mmap
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._eof = False
        self._on_output = on_output
        self._drain = threading.Thread(target=self._drain_output, name=f"executor-{proc.pid}-out",
                                       daemon=True)
        self._drain.start()

    @classmethod
    def spawn(cls, init: dict[str, Any], env: Mapping[str, str] | None = None,
              python: str = sys.executable,
              on_output: Callable[[str], None] | None = None) -> ExecutorHandle:
        """Start an executor and send it ``init``; call ``wait_ready`` next.

        ``env`` is the environment to scrub (default: ours); only the executor's allowlist and
        ``init["env_allowlist"]`` survive. ``on_output`` receives each line the executor prints
        (its own log and stray shim output), from a drain thread.
        """
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            source = os.environ if env is None else env
            proc = subprocess.Popen(
                [python, "-m", "pool.executor", "--fd", str(child.fileno()),
                 "--parent-pid", str(os.getpid())],
                pass_fds=(child.fileno(),),
                env=executor_env(source, init.get("env_allowlist") or ()),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                cwd=_package_root(),
                # its own process group (shims join it): a terminal's Ctrl-C reaches only the
                # supervisor, which decides; kill() takes the executor and its shims together
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            child.close()
            raise
        child.close()
        handle = cls(proc, parent, on_output)
        handle.send(dict(init, type=protocol.INIT))
        return handle

    # --- talking -----------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Send one message; ExecutorGone if the executor is no longer there."""
        try:
            protocol.send(self.sock, message)
        except OSError as exc:
            raise self._gone(f"executor socket closed while sending: {exc}") from None

    def run(self, run_id: str, plan: dict[str, Any], input: Any = None,
            limits: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> None:
        self.send({"type": protocol.RUN, "run_id": run_id, "plan": plan,
                   "input": {} if input is None else input, "limits": limits or {},
                   "options": options or {}})

    def cancel(self, run_id: str) -> None:
        self.send({"type": protocol.CANCEL, "run_id": run_id})

    def stop(self, graceful: bool = True) -> None:
        self.send({"type": protocol.STOP, "graceful": graceful})

    def fileno(self) -> int:
        """The socket's fd, for select(): readable means ``recv`` has something (or EOF)."""
        return self.sock.fileno()

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds; ExecutorGone at EOF."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            if self._eof:
                raise self._gone("executor closed its socket")
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], wait)
            if not readable:
                return None
            self._pending.extend(self.read_available() or ())
        return self._pending.popleft()

    def read_available(self) -> list[dict[str, Any]] | None:
        """One read, for a caller that knows the socket is readable (an event loop): the whole
        messages that arrived, possibly none yet; None at EOF. ProtocolError on a bad frame."""
        try:
            size = self.sock.recv_into(self._inbuf)
        except BlockingIOError:
            return []
        except OSError:
            size = 0
        if not size:
            self._eof = True
            return None
        messages = list(self._reader.feed(memoryview(self._inbuf)[:size]))
        for message in messages:
            if message.get("type") == BOOT_FAILED:
                self.boot_failure = str(message.get("reason") or "boot failed")
        return messages

    def gone(self) -> ExecutorGone:
        """Why the executor is gone, once its socket read EOF (reaps it: may wait up to 2 s)."""
        return self._gone("executor closed its socket")

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait for the first ``ready``; ExecutorBootError (with the reason) if it never comes."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise ExecutorBootError(f"executor did not report ready within {timeout:g}s")
            try:
                message = self.recv(left)
            except ExecutorGone as gone:
                raise ExecutorBootError(gone.reason) from None
            if message is None:
                continue
            if message["type"] == protocol.READY:
                return message
            if message["type"] == BOOT_FAILED:
                self.wait(5)
                raise ExecutorBootError(self.boot_failure or "boot failed")

    # --- lifecycle -----------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> int | None:
        """Reap the process; its exit code, or None if it is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the executor and every shim of its process group (a shim stuck in a loop
        would not notice its fd closing)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self, timeout: float = 10.0) -> int | None:
        """Ask for a graceful stop, wait up to ``timeout`` s, then kill; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ExecutorGone):
                self.stop(graceful=False)
            if self.wait(timeout) is None:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a shim its executor failed to reap
        self.sock.close()
        self._drain.join(timeout=2)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "\n".join(self.output_tail)

    def _gone(self, fallback: str) -> ExecutorGone:
        code = self.wait(2.0)
        self._drain.join(timeout=2)
        if self.boot_failure:
            reason = self.boot_failure
        elif code == protocol.EXIT_BOOT_FAILURE and self.output_tail:
            reason = self.output_tail[-1]
        elif code is not None and code < 0:
            reason = f"executor killed by signal {-code}"
        elif code is not None:
            reason = f"executor exited with code {code}"
        else:
            reason = fallback
        return ExecutorGone(code, reason)

    def _drain_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.output_tail.append(line)
            if self._on_output is not None:
                self._on_output(line)


def _package_root() -> str:
    """The folder holding the ``pool`` package, so ``-m pool.executor`` resolves from anywhere."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
