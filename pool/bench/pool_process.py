"""``poolctl start`` as a child process of the benchmark, pointed at an in-process dev server.

The pool under test is the real product, started the way an operator starts it (the same
command, settings from flags), so what the benchmark measures is what they would get.
Its output goes to a log file, named in every error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pool.bench import userns
from pool.devserver.server import DevServer

BOOT_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


class PoolFailed(RuntimeError):
    """The pool exited or never became ready; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PoolProcess:
    """One ``poolctl start --size N --isolation MODE`` against ``server``."""

    def __init__(self, server: DevServer, size: int | None, isolation: str | None, repo_dir: str,
                 extra: Sequence[str] = (), log_dir: str | None = None,
                 python_args: Sequence[str] = ()) -> None:
        """``python_args`` go before ``-m pool.cli`` (e.g. ``-m cProfile -o FILE``); a size or
        isolation of None is left to ``extra`` (e.g. ``--config FILE``)."""
        self.server = server
        self.port = free_port()
        log_dir = log_dir or tempfile.gettempdir()
        self.log_path = Path(log_dir) / f"poolctl-bench-{isolation}-{size}-{self.port}.log"
        chosen = [*(["--size", str(size)] if size else []),
                  *(["--isolation", isolation] if isolation else [])]
        # not root: in a user namespace of our own, or the pool's memory could not be read
        # (its processes are not dumpable; pool/bench/userns.py)
        self.args = userns.wrap([
            sys.executable, *python_args, "-m", "pool.cli", "start", *chosen,
            "--port", str(self.port), "--http-host", "127.0.0.1",
            "--control-socket", str(Path(log_dir) / f"poolctl-bench-{self.port}.sock"),
            "--backoff", "0.05/0.5", "--log", "warn", *extra])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        self.env |= server.worker_env() | {
            "WORKER_REPO_DIR": repo_dir,
            "WORKER_STATE_DIR": str(Path(log_dir) / f"poolctl-bench-state-{self.port}")}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("pool not started")
        return self.proc.pid

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failed(self, what: str) -> PoolFailed:
        return PoolFailed(f"{what} (log {self.log_path}):\n{self.tail()}")

    def start(self) -> PoolProcess:
        """Start and wait until it connects to the dev server: ``poolctl start`` connects
        only once every executor reported ``ready``."""
        connections = len(self.server.connections)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while len(self.server.connections) == connections:
            if self.proc.poll() is not None:
                raise self.failed(f"poolctl start exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise self.failed(f"poolctl start not ready after {BOOT_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        return self

    def stop(self) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it hangs; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> PoolProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
