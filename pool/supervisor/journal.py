"""The journal of claimed runs: what a restarted supervisor needs to report what it had.

``kill -9`` of the supervisor (an OOM kill, a crashed container) leaves every run it claimed
``claimed`` or ``started`` on Lightning until Lightning's janitor marks it ``lost``. The
journal is the memory across that death: one append-only file per pool identity under
``--state-dir`` (``WORKER_STATE_DIR``), one JSON record per line, written at each step of a
run's life that changes what a restart must do with it (docs/design/journal.md):

    claim       {"k": "claim", "id", "token", "exp", "wl"}   the run token, its expiry, workloop
    joined      {"k": "joined", "id"}                        run:<id> join acknowledged
    dispatched  {"k": "dispatched", "id"}                    handed to an executor: its code
                                                             may have run from here on
    started     {"k": "started", "id"}                       run:start acknowledged
    step        {"k": "step", "id", "step", "job"}           step:start queued for Lightning
    step_done   {"k": "step_done", "id", "step"}             its step:complete answered
    done        {"k": "done", "id"}                          run:complete answered: forget it
    run         {"k": "run", ...state}                       a whole run, written by compaction

The first line is a header with the writer's boot id (``/proc/sys/kernel/random/boot_id``):
records reach the file with ``write()`` alone (no fsync on the loop), which survives the death
of the process — the page cache is the kernel's — but not of the host. A journal written in
another boot may have lost its last records, so recovery trusts "never dispatched" only from
the same boot.

Each line carries a CRC-32 of its JSON, so a torn record (the process died mid-``write()``, a
host crash cut the file) is recognised and skipped, never fatal. The file is rewritten with
only the live runs (``run`` records) at start-up, at a clean stop and whenever it outgrows
``COMPACT_BYTES`` (some 250 runs' records), so it stays small over millions of runs and a
start after a clean stop reads one line.

Run tokens authorise fetching a run's credentials: the directory is 0700, the files 0600, and
the directory must lie outside everything a shim's sandbox can see (checked in config.py).
The lock file (``flock``) makes a second pool with the same identity fail at start instead of
replaying the first one's runs.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
COMPACT_BYTES = 256 * 1024  # rewritten with only the live runs above this size (~250 runs)
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class JournalError(Exception):
    """The journal cannot be used (its lock is held, its directory is unusable)."""


def boot_id() -> str | None:
    """This host's boot id, or None where the kernel does not say (then nothing is trusted)."""
    try:
        return Path(BOOT_ID_PATH).read_text().strip() or None
    except OSError:
        return None


def token_expiry(token: str, claims: dict[str, Any] | None) -> float | None:
    """The run token's ``exp`` (wall-clock seconds): from its verified claims, else read from
    the token itself (unverified, only to know when reporting becomes pointless)."""
    if claims is None:
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError, TypeError):
            return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def pool_identity(worker_name: str | None, port: int) -> str:
    """The journal's name: the worker name (or host/pod name) and the HTTP port, which no two
    pools on one host share, so pools on a shared volume never replay each other's runs."""
    name = worker_name or socket.gethostname() or "poolctl"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "poolctl"
    return f"{safe}-{port}"


@dataclass
class JournaledRun:
    """What the journal knows of one run (replayed from its records)."""

    id: str
    token: str
    exp: float | None = None  # the token's expiry, wall-clock seconds (None: unknown)
    workloop: int = 0
    joined: bool = False
    dispatched: bool = False  # or: not provably undispatched (another boot's journal)
    started: bool = False
    open_steps: dict[str, str] = field(default_factory=dict)  # step_id -> job_id
    unproven: bool = False  # joined, "never dispatched" unprovable: another boot's journal
    rejoin_timeouts: int = 0  # recovery's rejoins Lightning did not answer (not journaled)

    def as_record(self) -> dict[str, Any]:
        return {"k": "run", "id": self.id, "token": self.token, "exp": self.exp,
                "wl": self.workloop, "joined": self.joined, "dispatched": self.dispatched,
                "started": self.started, "steps": self.open_steps, "unproven": self.unproven}


@dataclass
class Replay:
    """What opening the journal found: the runs left by the previous incarnation."""

    runs: dict[str, JournaledRun]
    same_boot: bool  # written in this boot: the page cache kept every record
    torn: int = 0  # records skipped as unreadable
    bytes: int = 0


def encode_record(record: dict[str, Any]) -> bytes:
    text = _ENCODER.encode(record)
    return f"{zlib.crc32(text.encode()):08x} {text}\n".encode()


def decode_line(line: bytes) -> dict[str, Any] | None:
    """A record, or None if the line is torn or damaged (bad CRC, not JSON, no newline)."""
    if not line.endswith(b"\n") or len(line) < 11 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("k"), str) else None


def apply_record(runs: dict[str, JournaledRun], record: dict[str, Any]) -> None:
    """One record's effect on the replayed runs (unknown kinds and runs are ignored: a newer
    writer's records, or a run whose claim record was compacted away after it ended)."""
    kind, run_id = record["k"], record.get("id")
    if not isinstance(run_id, str):
        return
    if kind == "claim":
        runs[run_id] = JournaledRun(run_id, str(record.get("token") or ""), record.get("exp"),
                                    int(record.get("wl") or 0))
        return
    if kind == "run":
        steps = record.get("steps") if isinstance(record.get("steps"), dict) else {}
        runs[run_id] = JournaledRun(
            run_id, str(record.get("token") or ""), record.get("exp"),
            int(record.get("wl") or 0), bool(record.get("joined")),
            bool(record.get("dispatched")), bool(record.get("started")),
            {str(k): str(v) for k, v in steps.items()}, bool(record.get("unproven")))
        return
    run = runs.get(run_id)
    if run is None:
        return
    if kind == "joined":
        run.joined = True
    elif kind == "dispatched":
        run.dispatched = True
    elif kind == "started":
        run.dispatched = run.started = True
    elif kind == "step":
        run.open_steps[str(record.get("step"))] = str(record.get("job"))
    elif kind == "step_done":
        run.open_steps.pop(str(record.get("step")), None)
    elif kind == "done":
        del runs[run_id]


class Journal:
    """The open journal of one pool identity; every method is called on the arbiter loop.

    ``record()`` is one ``write()`` of one line (the page cache makes it survive the process);
    with ``fsync=True`` a background thread also fsyncs the file soon after each write, for
    host crashes, without ever holding up the loop.
    """

    def __init__(self, state_dir: str | os.PathLike[str], identity: str, *,
                 fsync: bool = False, compact_bytes: int = COMPACT_BYTES) -> None:
        self.dir = Path(state_dir)
        self.identity = identity
        self.path = self.dir / f"{identity}.journal"
        self.lock_path = self.dir / f"{identity}.lock"
        self.compact_bytes = compact_bytes
        self.runs: dict[str, JournaledRun] = {}  # live runs, as the file says
        self.size = 0
        self.boot = boot_id()
        self._fd = -1
        self._lock_fd = -1
        self._fsync = fsync
        self._dirty = threading.Event()
        self._closed = False
        self._syncer: threading.Thread | None = None
        self.write_errors = 0

    # -- open, replay, close ------------------------------------------------------------------
    def open(self) -> Replay:
        """Take the lock, read what the previous incarnation left, start a fresh file that
        still holds those runs (so a second death during recovery loses nothing)."""
        self._make_dir()
        self._take_lock()
        replay = self._read()
        self.runs = {run_id: run for run_id, run in replay.runs.items()}
        if not replay.same_boot:  # its last records may be gone: never trust "not dispatched"
            for run in self.runs.values():
                if run.joined and not run.dispatched:
                    run.dispatched = run.unproven = True
        self._rewrite()
        if self._fsync:
            self._syncer = threading.Thread(target=self._sync_loop, name="journal-fsync",
                                            daemon=True)
            self._syncer.start()
        return replay

    def _make_dir(self) -> None:
        hint = "; point --state-dir / WORKER_STATE_DIR at a writable directory"
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"state dir {self.dir} cannot be created: {exc}{hint}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise JournalError(f"state dir {self.dir} is not writable{hint}")

    def _take_lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            raise JournalError(
                f"the journal {self.path} is held by another poolctl{holder}: each pool on a "
                "shared state dir needs its own identity (WORKER_NAME or host name, and "
                "--port)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _read(self) -> Replay:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Replay({}, True)
        except OSError as exc:
            raise JournalError(f"the journal {self.path} cannot be read: {exc}") from None
        runs: dict[str, JournaledRun] = {}
        torn, header = 0, None
        for line in data.splitlines(keepends=True):
            record = decode_line(line)
            if record is None:
                torn += 1
                continue
            if record["k"] == "hello":
                header = record
                continue
            apply_record(runs, record)
        if torn:
            log.warning("journal %s: %d torn or damaged record(s) skipped", self.path, torn)
        same_boot = header is not None and self.boot is not None \
            and header.get("boot") == self.boot
        return Replay(runs, same_boot, torn, len(data))

    def close(self, compact: bool = True) -> None:
        """Compact (what is left is only what a next start must recover) and let go;
        ``compact=False`` leaves the file as a death would."""
        if compact and self._fd >= 0:
            self._rewrite()
        self._closed = True
        self._dirty.set()
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1

    # -- records ------------------------------------------------------------------------------
    def claimed(self, run_id: str, token: str, exp: float | None, workloop: int) -> None:
        self.runs[run_id] = JournaledRun(run_id, token, exp, workloop)
        self._write({"k": "claim", "id": run_id, "token": token, "exp": exp, "wl": workloop})

    def joined(self, run_id: str) -> None:
        self._mark(run_id, "joined")

    def dispatched(self, run_id: str) -> None:
        self._mark(run_id, "dispatched")

    def started(self, run_id: str) -> None:
        self._mark(run_id, "started")

    def step_opened(self, run_id: str, step_id: str, job_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.open_steps[step_id] = job_id
            self._write({"k": "step", "id": run_id, "step": step_id, "job": job_id})

    def step_closed(self, run_id: str, step_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None and run.open_steps.pop(step_id, None) is not None:
            self._write({"k": "step_done", "id": run_id, "step": step_id})

    def done(self, run_id: str) -> None:
        """run:complete was answered (or the run was given up): nothing left to recover."""
        if self.runs.pop(run_id, None) is None:
            return
        self._write({"k": "done", "id": run_id})
        if self.size > self.compact_bytes:
            self._rewrite()

    def delivered(self, run_id: str, event: str, payload: dict[str, Any], ok: bool) -> None:
        """Lightning answered a run's lifecycle event (the outbox moved past it)."""
        if event == "run:start" and ok:
            self.started(run_id)
        elif event == "step:complete":  # answered, even refused: sending it again cannot help
            self.step_closed(run_id, str(payload.get("step_id")))

    def _mark(self, run_id: str, kind: str) -> None:
        run = self.runs.get(run_id)
        if run is None:
            return
        setattr(run, kind, True)
        if kind == "started":
            run.dispatched = True
        self._write({"k": kind, "id": run_id})

    # -- writing ------------------------------------------------------------------------------
    def _write(self, record: dict[str, Any]) -> None:
        if self._fd < 0:
            return
        data = encode_record(record)
        try:
            os.write(self._fd, data)  # O_APPEND: one write, one record
        except OSError as exc:
            self._write_failed(exc)
            return
        self.size += len(data)
        if self._fsync:
            self._dirty.set()

    def _write_failed(self, exc: OSError) -> None:
        self.write_errors += 1
        if self.write_errors == 1:
            log.error("journal %s: write failed (%s): runs in progress may not be recovered "
                      "after a crash", self.path, exc)

    def _rewrite(self) -> None:
        """Compaction: a new file with the header and one record per live run, swapped in
        atomically (``rename``), so a death at any moment leaves one whole journal."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        header = {"k": "hello", "v": VERSION, "boot": self.boot, "pid": os.getpid()}
        data = encode_record(header) + b"".join(
            encode_record(run.as_record()) for run in self.runs.values())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            self._write_failed(exc)
            return
        old, self._fd, self.size = self._fd, new_fd, len(data)
        if old >= 0:
            os.close(old)

    def _sync_loop(self) -> None:
        """fsync soon after writes, off the loop (``fsync=True``): host crashes lose at most
        the last moments, and the loop never waits for the disk."""
        while not self._closed:
            self._dirty.wait()
            self._dirty.clear()
            fd = self._fd
            if fd >= 0 and not self._closed:
                with contextlib.suppress(OSError):
                    os.fsync(fd)
