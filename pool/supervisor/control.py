"""The control socket: ``poolctl status|scale|drain|stop`` talk to a running pool through it.

A unix stream socket, mode 0600, at a path derived from ``WORKER_PORT`` so the client finds
it with no flags (two pools on one host differ by port already). Each request is one JSON line
and gets one JSON line back: ``{"cmd": "scale", "size": 3}`` → ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "..."}``. The server runs on its own thread and never touches pool
state: ``status`` reads the published snapshot, every other command is handed to the arbiter
loop through ``PoolHandle.submit`` and the reply waits for the loop's answer.

Who may talk: file mode 0600 keeps other users out of the socket, and the server checks the
peer's credentials (SO_PEERCRED) as well, so a socket placed in a shared directory, or made
world-writable by mistake, still only obeys its owner or root. The client checks the server's
credentials the same way, so a socket planted by another user in ``/tmp`` is not believed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pool.supervisor.snapshot import PoolHandle
from pool.supervisor.status import render_status, status_reply

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
REPLY_TIMEOUT_S = 10.0  # how long a command may wait for the arbiter loop to take it
CLIENT_TIMEOUT_S = REPLY_TIMEOUT_S + 5.0
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL


class ControlError(RuntimeError):
    """A control-socket problem, with a message fit to show the operator as-is."""


def default_control_socket(port: int, env: Mapping[str, str] | None = None) -> str:
    """``$XDG_RUNTIME_DIR/poolctl-<port>.sock`` when that private directory exists, else
    ``/tmp/poolctl-<uid>-<port>.sock`` (the uid keeps users of a shared /tmp apart)."""
    env = os.environ if env is None else env
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, f"poolctl-{port}.sock")
    return f"/tmp/poolctl-{os.getuid()}-{port}.sock"


def control_socket_path(settings: Any) -> str:
    """The socket path from resolved settings: ``--control-socket`` or the port's default."""
    return settings.control_socket or default_control_socket(settings.port)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected unix socket (Linux SO_PEERCRED)."""
    fmt = "3i"  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    return struct.unpack(fmt, raw)[1]


def _trusted(uid: int) -> bool:
    return uid == os.getuid() or uid == 0


# --- server ---------------------------------------------------------------------------------

Command = Callable[[PoolHandle, dict[str, Any]], Any]


def _forward(name: str, validate: Callable[[dict[str, Any]], dict[str, Any]]) -> Command:
    """A command the arbiter loop runs; the reply is whatever the loop resolves it with."""

    def run(handle: PoolHandle, request: dict[str, Any]) -> Any:
        future = handle.submit(name, **validate(request))
        try:
            return future.result(timeout=REPLY_TIMEOUT_S)
        except FutureTimeout:
            raise ControlError(
                f"the pool did not take {name!r} within {REPLY_TIMEOUT_S:.0f} s") from None

    return run


def _scale_args(request: dict[str, Any]) -> dict[str, Any]:
    size = request.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise ControlError(f"scale needs an integer size, got {size!r}")
    return {"size": size}


def _stop_args(request: dict[str, Any]) -> dict[str, Any]:
    graceful = request.get("graceful", True)
    if not isinstance(graceful, bool):
        raise ControlError(f"stop: graceful must be true or false, got {graceful!r}")
    return {"graceful": graceful}


COMMANDS: dict[str, Command] = {
    "status": lambda handle, _request: status_reply(handle.snapshot()),
    "scale": _forward("scale", _scale_args),
    "drain": _forward("drain", lambda _request: {}),
    "stop": _forward("stop", _stop_args),
}


def answer(handle: PoolHandle, line: bytes) -> dict[str, Any]:
    """One request line → one reply; never raises (a bad request is an error reply)."""
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "request is not valid JSON"}
    except RecursionError:  # e.g. 60 KiB of "[": the decoder recurses once per level
        return {"ok": False, "error": "request is nested too deeply to be a command"}
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": 'request must be a JSON object with a "cmd" string'}
    command = COMMANDS.get(request["cmd"])
    if command is None:
        return {"ok": False, "error": f"unknown command {request['cmd']!r}; "
                                      f"known: {', '.join(sorted(COMMANDS))}"}
    try:
        return {"ok": True, "result": command(handle, request)}
    except (ControlError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # the loop failed the command: say so, keep serving
        log.exception("control command %s failed", request["cmd"])
        return {"ok": False, "error": f"{request['cmd']} failed: {exc}"}


class ControlServer:
    """Serves the control socket on a daemon thread until ``close``."""

    def __init__(self, path: str, handle: PoolHandle) -> None:
        self.path = path
        self.handle = handle
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (refusing a live socket, replacing a stale one) and start serving."""
        self._listener = bind_control_socket(self.path)
        self._inode = os.stat(self.path).st_ino
        self._listener.settimeout(0.5)  # lets close() stop the accept loop promptly
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()
        log.info("control socket at %s", self.path)

    def close(self) -> None:
        """Stop serving and remove the socket file, unless another pool has replaced it."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            threading.Thread(target=self._converse, args=(conn,), name="control-conn",
                             daemon=True).start()

    def _converse(self, conn: socket.socket) -> None:
        """One client's requests until it hangs up; a client gone early is one debug line."""
        try:
            self._serve_client(conn)
        except OSError as exc:
            log.debug("control socket: client went away: %s", exc)
        finally:
            conn.close()

    def _serve_client(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if not _trusted(uid):
            log.warning("control socket: refused a connection from uid %d", uid)
            _send(conn, {"ok": False, "error": f"permission denied: uid {uid} does not own "
                                              "this pool"})
            return
        conn.settimeout(REPLY_TIMEOUT_S)
        reader = conn.makefile("rb")
        while True:
            try:
                line = reader.readline(MAX_REQUEST_BYTES + 1)
            except (TimeoutError, OSError):
                return
            if not line:
                return
            if len(line) > MAX_REQUEST_BYTES:
                _send(conn, {"ok": False, "error": "request longer than 64 KiB"})
                return
            if not line.strip():
                continue
            if not _send(conn, answer(self.handle, line)):
                return


def _send(conn: socket.socket, reply: dict[str, Any]) -> bool:
    try:
        conn.sendall(json.dumps(reply).encode() + b"\n")
        return True
    except OSError:
        return False


def bind_control_socket(path: str) -> socket.socket:
    """A listening socket at ``path``, mode 0600 from the moment it appears there.

    The socket is bound under a private temporary name, chmod-ed, then hard-linked into place:
    ``link`` fails if the name exists, so two pools starting at once cannot both win, and the
    path is never visible with looser permissions.
    """
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ControlError(f"control socket path is too long for a unix socket "
                           f"({len(path)} > {_SUN_PATH_MAX} bytes): {path}")
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ControlError(f"control socket directory {directory} does not exist")
    tmp = os.path.join(directory, f".poolctl-{os.getpid()}-{threading.get_ident()}.tmp")
    if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
        raise ControlError(f"control socket directory name is too long: {directory}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        listener.bind(tmp)
        os.chmod(tmp, 0o600)
        listener.listen(16)
        try:
            _link_into_place(tmp, path)
        finally:
            os.unlink(tmp)
    except BaseException:
        listener.close()
        raise
    return listener


def _link_into_place(tmp: str, path: str) -> None:
    for _attempt in range(2):
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            _remove_if_stale(path)
    raise ControlError(f"another pool took the control socket {path} while this one started")


def _remove_if_stale(path: str) -> None:
    """Unlink ``path`` if it is our own socket that nobody answers on; else raise ControlError."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(f"{path} exists and is not a socket; remove it or pass "
                           "--control-socket")
    if info.st_uid != os.getuid():
        raise ControlError(f"control socket {path} belongs to uid {info.st_uid}; pass "
                           "--control-socket or another --port")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale control socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError:
        pass  # e.g. a full backlog: somebody is there
    finally:
        probe.close()
    raise ControlError(f"a pool is already running with control socket {path}; stop it first "
                       "(poolctl stop) or use another --port / --control-socket")


# --- client ---------------------------------------------------------------------------------

def request(path: str, cmd: str, timeout: float = CLIENT_TIMEOUT_S, **args: Any) -> Any:
    """Send one command to the pool at ``path`` and return its result.

    Raises ControlError with an operator-facing message when no pool runs there, when the
    socket is not trustworthy, or when the pool answers with an error.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no pool is running with control socket {path} (no such file); "
                               "is `poolctl start` running with the same --port?") from None
        except ConnectionRefusedError:
            raise ControlError(f"no pool is running with control socket {path} "
                               "(stale socket, nobody answers)") from None
        except PermissionError:
            raise ControlError(f"permission denied on control socket {path}: it belongs to "
                               "another user") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to control socket {path}: "
                               f"{os.strerror(exc.errno or errno.EIO)}") from None
        owner = peer_uid(sock)
        if not _trusted(owner):
            raise ControlError(f"control socket {path} is served by uid {owner}, not by you; "
                               "refusing to talk to it")
        try:
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            line = sock.makefile("rb").readline(MAX_REQUEST_BYTES * 16)
        except TimeoutError:
            raise ControlError(f"the pool at {path} did not answer within {timeout:.0f} s") \
                from None
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc}") from None
    if not line:
        raise ControlError(f"the pool at {path} closed the connection without answering")
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"the pool at {path} sent a reply that is not JSON") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")


def control_command(settings: Any, cmd: str, as_json: bool = False, **args: Any) -> int:
    """``poolctl status|scale|drain|stop``: print the pool's answer; exit code 0 or 1."""
    path = control_socket_path(settings)
    try:
        result = request(path, cmd, **args)
    except ControlError as exc:
        print(f"poolctl {cmd}: {exc}", file=sys.stderr)
        return 1
    if cmd == "status" and not as_json:
        print(render_status(result))
    elif isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2 if as_json else None))
    return 0
