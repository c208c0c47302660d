"""A Phoenix channels (serializer V2) client, as Lightning's worker socket needs.

One thread owns every piece of state (channels, refs, pending pushes, timers) and the socket
itself: it runs an :class:`~pool.eventloop.EventLoop` that reads frames as they arrive, so a
reply costs no thread hop. That thread is either the caller's (the supervisor passes its own
loop and calls :meth:`PhoenixSocket.next_deadline` / :meth:`PhoenixSocket.fire_timers` each
turn: one loop owns everything, DESIGN's rule) or, with no loop given, a ``lightning-socket``
thread of its own. Calls from other threads become commands run on the owning thread. Replies,
server pushes and connection notices are delivered by calling the callbacks given here *from
that thread*, so they must be cheap and must not block (the supervisor's only enqueue).
Only the handshake (websocket-client, on a short-lived connector thread) happens elsewhere.

Behaviour follows the Phoenix JS client that ws-worker uses (reference §2), with three
deliberate differences: every address the host resolves to is tried (IPv6 and IPv4) so
``localhost`` never fails on the wrong family; the connection is reopened after *any* close
we did not ask for; and pushes already sent when the socket dropped are sent again after the
channel rejoins (unless ``resend=False``), so a run's events are not lost to a restart.

One push is never sent again: when Lightning closes the socket with code 1009 (message too
big: a frame over its ``max_frame_size``), the largest push still waiting for a reply is the
frame it refused (or one at least as large, so too big as well). Sending it again would only
close the socket again, forever, so it settles with a ``too_big`` reply instead, and its owner
decides what to send in its place; every other push in flight is sent again as usual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

import websocket

from pool.eventloop import EventLoop
from pool.lightning.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    close_frame,
    encode_frame,
)

log = logging.getLogger(__name__)

API_VERSION = "1.2"
VSN = "2.0.0"
PHX_JOIN, PHX_LEAVE, PHX_REPLY = "phx_join", "phx_leave", "phx_reply"
PHX_ERROR, PHX_CLOSE = "phx_error", "phx_close"
KIND_PUSH, KIND_REPLY, KIND_BROADCAST = 0, 1, 2
CLOSE_TOO_BIG = 1009  # RFC 6455: "message too big", what Lightning closes with over its limit
TOO_BIG = "too_big"  # a Reply status: Lightning closed the socket on this push's frame

Resolver = Callable[..., Sequence[tuple[Any, ...]]]
# one encoder for every frame: json.dumps with options builds a new one per call
_FRAME_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
RECV_SIZE = 256 * 1024
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_EVENT_LOCK = threading.Lock()  # only to create a Push's Event lazily, for threads that wait


def build_socket_url(endpoint: str, token: str, worker_version: str) -> str:
    """``ws://host:4000/worker`` → ``…/worker/websocket?token=…&api_version=1.2&…&vsn=2.0.0``.

    Values are escaped like JavaScript's encodeURIComponent, as the Phoenix client does.
    ``http(s)`` is accepted as ``ws(s)`` since operators often paste Lightning's web URL scheme.
    """
    parts = urlsplit(endpoint.strip())
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError(f"Lightning URL {endpoint!r} must look like ws://host:4000/worker")
    path = parts.path.rstrip("/")
    if not path.endswith("/websocket"):
        path += "/websocket"
    params = [("token", token), ("api_version", API_VERSION),
              ("worker_version", worker_version), ("vsn", VSN)]
    query = "&".join(f"{k}={quote(v, safe='-_.!~*()' + chr(39))}" for k, v in params)
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class Reply(NamedTuple):
    """How a push ended: ``ok`` or ``error`` (Lightning's reply), ``timeout`` (no reply) or
    ``too_big`` (Lightning closed the socket on its frame, code 1009; never sent again).
    (A tuple: one is made per reply on the supervisor's hot path.)"""

    status: str
    response: Any = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class LightningError(Exception):
    """A push that did not succeed, worded as ws-worker words it (reference §6.4).

    ``[fetch:credential] {"errors":...}`` for an error reply (strings as-is, other values as
    compact JSON), ``[run:log] timeout`` when no reply came in time.
    """

    def __init__(self, event: str, reply: Reply) -> None:
        self.event = event
        self.reply = reply
        super().__init__(describe_failure(event, reply))


def describe_failure(event: str, reply: Reply) -> str:
    if reply.status == "timeout":
        return f"[{event}] timeout"
    response = reply.response
    if isinstance(response, bytes):
        response = response.decode("utf-8", "replace")
    if not isinstance(response, str):
        response = json.dumps(response, separators=(",", ":"), ensure_ascii=False)
    return f"[{event}] {response}"


class Push:
    """One message sent to Lightning and the reply it gets; settled exactly once.

    Its timeout clock starts when it is made, even if it has to wait for a (re)join first.
    ``decode`` turns an ok response into the value :meth:`result` returns. ``encoded`` is the
    payload as compact JSON when the caller has it already (it sized the event), so it is not
    encoded twice.
    """

    def __init__(self, topic: str, event: str, payload: Any, timeout: float,
                 callback: Callable[[Push], None] | None = None, resend: bool = True,
                 decode: Callable[[Any], Any] | None = None,
                 encoded: str | None = None) -> None:
        self.topic = topic
        self.event = event
        self.payload = payload
        self.encoded = encoded
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.callback = callback
        self.resend = resend
        self.decode = decode
        self.ref: str | None = None
        self.frame_bytes = 0  # the size of its last frame on the wire
        self.reply: Reply | None = None
        # made only for a thread that waits: most pushes are settled into a callback, and an
        # Event per push was a measurable share of the supervisor's CPU per run
        self._event: threading.Event | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None

    def wait(self, timeout: float | None = None) -> Reply:
        """Block until settled (at the latest by the push's own deadline)."""
        if self.reply is None:
            with _EVENT_LOCK:
                if self._event is None:
                    self._event = threading.Event()
                event = self._event
                if self.reply is not None:
                    event.set()
            if not event.wait(timeout):
                raise TimeoutError(f"{self.event} on {self.topic} not settled within {timeout}s")
        assert self.reply is not None
        return self.reply

    def result(self, timeout: float | None = None) -> Any:
        """The (decoded) ok response; raises LightningError for an error reply, a timeout or
        a response ``decode`` cannot read (ValueError)."""
        reply = self.wait(timeout)
        if not reply.ok:
            raise LightningError(self.event, reply)
        if self.decode is None:
            return reply.response
        try:
            return self.decode(reply.response)
        except ValueError as exc:
            raise LightningError(self.event, Reply("error", f"unreadable reply: {exc}")) from None

    def _settle(self, reply: Reply) -> bool:
        if self.reply is not None:
            return False
        self.reply = reply  # before looking for a waiter's Event: wait() looks in that order too
        if self._event is not None:
            self._event.set()
        if self.callback is not None:
            _safe_call(self.callback, self)
        return True


def _safe_call(fn: Callable[..., Any], *args: Any) -> None:
    """Run a caller's callback; its bug must not kill the socket's thread."""
    try:
        fn(*args)
    except Exception:
        log.exception("callback %r raised", fn)


class Channel:
    """A topic joined on the socket. Create with :meth:`PhoenixSocket.channel`.

    ``on_join(channel, reply, rejoined)`` is called after every join attempt (the first and
    each automatic rejoin), ``on_message(event, payload)`` for each server push while
    joined, ``on_close(channel, reason)`` when Lightning closes the channel itself.
    """

    def __init__(self, sock: PhoenixSocket, topic: str, payload: Any, timeout: float,
                 on_message: Callable[[str, Any], None] | None,
                 on_join: Callable[[Channel, Reply, bool], None] | None,
                 on_close: Callable[[Channel, str], None] | None) -> None:
        self.socket = sock
        self.topic = topic
        self.join_payload = payload if payload is not None else {}
        self.timeout = timeout
        self.on_message = on_message
        self.on_join = on_join
        self.on_close = on_close
        # owned by the socket's thread:
        self.state = "closed"  # closed | joining | joined | errored | leaving
        self.join_ref: str | None = None
        self.wanted = False
        self.joined_before = False
        self.buffer: list[Push] = []
        self.first_join: Push | None = None
        self.join_deadline: float | None = None
        self.rejoin_at: float | None = None
        self.rejoin_tries = 0

    def join(self, callback: Callable[[Push], None] | None = None) -> Push:
        """Join (once); the returned push settles with the first join's outcome."""
        push = Push(self.topic, PHX_JOIN, self.join_payload, self.timeout, callback)
        self.socket._post(("join", self, push))
        return push

    def push(self, event: str, payload: Any = None, timeout: float | None = None,
             callback: Callable[[Push], None] | None = None, resend: bool = True,
             decode: Callable[[Any], Any] | None = None, encoded: str | None = None) -> Push:
        """Send ``event``; buffered while the channel is not joined (its clock still runs).
        ``encoded``: ``payload`` already as compact JSON."""
        push = Push(self.topic, event, payload if payload is not None else {},
                    self.timeout if timeout is None else timeout, callback, resend, decode,
                    encoded)
        self.socket._post(("push", self, push))
        return push

    def leave(self, timeout: float | None = None,
              callback: Callable[[Push], None] | None = None) -> Push:
        """Leave: no more rejoins; buffered pushes fail; settles on Lightning's reply."""
        push = Push(self.topic, PHX_LEAVE, {}, self.timeout if timeout is None else timeout,
                    callback)
        self.socket._post(("leave", self, push))
        return push


class PhoenixSocket:
    """One websocket to Lightning with its channels, heartbeat, reconnects and rejoins.

    ``resolver`` has :func:`socket.getaddrinfo`'s signature; tests inject one to put ``::1``
    first. ``reconnect_delays`` / ``rejoin_delays`` are seconds, the last repeated forever.
    ``loop``: the owner's event loop (its thread then drives this socket: see the module's
    docstring); without one, :meth:`connect` starts a thread running a loop of its own.
    """

    def __init__(
        self,
        url: str,
        *,
        resolver: Resolver = socket.getaddrinfo,
        timeout: float = 30.0,
        heartbeat_s: float = 30.0,
        connect_timeout: float = 10.0,
        reconnect_delays: Sequence[float] = (1, 2, 5, 10),
        rejoin_delays: Sequence[float] = (1, 2, 5, 10),
        on_open: Callable[[], None] | None = None,
        on_close: Callable[[str], None] | None = None,
        loop: EventLoop | None = None,
    ) -> None:
        self.url = url
        self.resolver = resolver
        self.timeout = timeout
        self.heartbeat_s = heartbeat_s
        self.connect_timeout = connect_timeout
        self.reconnect_delays = tuple(reconnect_delays)
        self.rejoin_delays = tuple(rejoin_delays)
        self.on_open = on_open
        self.on_close = on_close
        self.address: Any = None  # the socket address in use, once connected
        self._own_loop = loop is None
        self._loop = loop if loop is not None else EventLoop()
        self._opened = threading.Event()
        self._started = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        # owned by the loop's thread:
        self._sock: socket.socket | None = None  # None while closed, or lost and not yet closed
        self._parser = FrameParser()
        # recv_into one buffer: recv(256 KiB) had malloc map and unmap 256 KiB per read,
        # which cost the supervisor more kernel time than the reads themselves
        self._inbuf = bytearray(RECV_SIZE)
        self._out = bytearray()  # bytes the kernel would not take yet
        self._gen = 0
        self._ref = 0
        self._state = "closed"  # closed | connecting | open
        self._channels: dict[str, Channel] = {}
        self._pending: dict[str, Push] = {}
        self._joins: dict[str, Channel] = {}
        self._reconnect_at: float | None = None
        self._reconnect_tries = 0
        self._reconnect_now = False
        self._hb_ref: str | None = None
        self._hb_next = 0.0
        self._hb_answered = False
        self._last_recv = 0.0
        # the earliest deadline of anything above; may be early (a fire then finds nothing
        # due), never late: every new deadline goes through _arm()
        self._due = float("inf")

    # -- public, any thread -------------------------------------------------------------------
    def connect(self) -> PhoenixSocket:
        """Start the first connection attempt (and the own loop's thread); returns at once."""
        if not self._started:
            self._started = True
            if self._own_loop:
                self._thread = threading.Thread(target=self._run_own_loop,
                                                name="lightning-socket", daemon=True)
                self._thread.start()
            self._post(("connect",))
        return self

    def wait_open(self, timeout: float) -> bool:
        return self._opened.wait(timeout)

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    def channel(self, topic: str, payload: Any = None, *, timeout: float | None = None,
                on_message: Callable[[str, Any], None] | None = None,
                on_join: Callable[[Channel, Reply, bool], None] | None = None,
                on_close: Callable[[Channel, str], None] | None = None) -> Channel:
        """A channel object for ``topic``; nothing is sent until :meth:`Channel.join`."""
        return Channel(self, topic, payload, self.timeout if timeout is None else timeout,
                       on_message, on_join, on_close)

    def disconnect(self, timeout: float = 5.0) -> None:
        """Close for good: every unsettled push fails, no reconnect; waits for the own loop."""
        if not self._started or self._stopped:
            return
        self._post(("disconnect",))
        if self._thread is not None:
            self._thread.join(timeout)

    def reconnect(self, url: str, why: str) -> None:
        """Connect again now, to ``url`` (a new worker token after the secret was rotated):
        the open socket is closed as if lost, so every channel rejoins and every unanswered
        push is resent on the new one, exactly as after a dropped connection."""
        self._post(("reconnect", url, why))

    def _post(self, command: tuple[Any, ...]) -> None:
        """Run a command on the loop's thread: at once when called from it, else soon."""
        if self._loop.in_loop_thread():
            self._handle(command)
        else:
            self._loop.call_from_thread(self._handle, command)

    # -- the loop's thread ------------------------------------------------------------------------
    def next_deadline(self) -> float:
        """When :meth:`fire_timers` next has something to do (monotonic seconds): kept up to
        date as deadlines are made, so asking costs nothing on every turn of the owner's loop."""
        return self._due

    def _arm(self, deadline: float) -> None:
        if deadline < self._due:
            self._due = deadline

    def _earliest_deadline(self) -> float:
        deadlines = [p.deadline for p in self._pending.values()]
        for ch in self._channels.values():
            deadlines += [p.deadline for p in ch.buffer]
            deadlines += [t for t in (ch.join_deadline, ch.rejoin_at) if t is not None]
            if ch.first_join is not None:
                deadlines.append(ch.first_join.deadline)
        if self._state == "open":
            deadlines.append(self._hb_next)
        if self._reconnect_at is not None:
            deadlines.append(self._reconnect_at)
        return min(deadlines, default=float("inf"))

    def fire_timers(self, now: float) -> None:
        """Time out pushes and joins, rejoin, heartbeat, reconnect: whatever is due by ``now``."""
        if now < self._due:
            return
        try:
            self._fire_timers(now)
        except Exception:
            log.exception("Lightning socket timer error (continuing)")
        self._due = self._earliest_deadline()

    def _run_own_loop(self) -> None:
        self._loop.bind()
        try:
            while not self._stopped:
                wait = max(0.0, min(self.next_deadline() - time.monotonic(), 1.0))
                try:
                    self._loop.run_once(wait)
                except Exception:
                    log.exception("Lightning socket loop error (continuing)")
                self.fire_timers(time.monotonic())
        finally:
            self._loop.close()

    def _handle(self, command: tuple[Any, ...]) -> None:
        try:
            self._command(command)
        except Exception:
            log.exception("Lightning socket error in %s (continuing)", command[0])

    def _command(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if self._stopped:
            return
        if kind in ("join", "push", "leave"):
            self._arm(command[2].deadline)
        if kind == "connect":
            self._start_connect()
        elif kind == "opened":
            self._on_opened(*command[1:])
        elif kind == "connect_failed":
            self._on_connect_failed(*command[1:])
        elif kind == "closed":
            if command[1] == self._gen:
                self._on_closed(*command[2:])
        elif kind == "join":
            self._join(command[1], command[2])
        elif kind == "push":
            self._push(command[1], command[2])
        elif kind == "leave":
            self._leave(command[1], command[2])
        elif kind == "disconnect":
            self._shutdown()
        elif kind == "reconnect":
            self._reconnect(command[1], command[2])

    def _fire_timers(self, now: float) -> None:
        for ref, push in list(self._pending.items()):
            if now >= push.deadline:
                del self._pending[ref]
                log.debug("%s on %s timed out after %ss", push.event, push.topic, push.timeout)
                push._settle(Reply("timeout"))
        for ch in list(self._channels.values()):
            for push in [p for p in ch.buffer if now >= p.deadline]:
                ch.buffer.remove(push)
                log.debug("%s on %s timed out before it could be sent", push.event, ch.topic)
                push._settle(Reply("timeout"))
            if ch.first_join is not None and now >= ch.first_join.deadline:
                ch.first_join._settle(Reply("timeout"))
                ch.first_join = None
            if ch.join_deadline is not None and now >= ch.join_deadline:
                self._join_timed_out(ch)
            if ch.rejoin_at is not None and now >= ch.rejoin_at and self._state == "open":
                ch.rejoin_at = None
                self._send_join(ch)
        if self._state == "open" and now >= self._hb_next:
            self._heartbeat(now)
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect_at = None
            self._start_connect()

    # -- connection -------------------------------------------------------------------------------
    def _start_connect(self) -> None:
        if self._stopped or self._state != "closed":
            return
        self._state = "connecting"
        self._gen += 1
        threading.Thread(target=self._connector, args=(self._gen,), name="lightning-connect",
                         daemon=True).start()

    def _connector(self, gen: int) -> None:
        """Try each resolved address in order (its own thread: connecting may take seconds)."""
        parts = urlsplit(self.url)
        secure = parts.scheme == "wss"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if secure else 80)
        try:
            infos = list(self.resolver(host, port, 0, socket.SOCK_STREAM))
        except OSError as exc:
            self._post(("connect_failed", gen, f"cannot resolve {host}: {exc}"))
            return
        errors = []
        for family, type_, proto, _name, address in infos:
            raw = socket.socket(family, type_, proto)
            raw.settimeout(self.connect_timeout)
            # small request/reply frames: Nagle would hold one back for the last one's ACK
            # (websocket-client sets this itself only on sockets it creates)
            if family in (socket.AF_INET, socket.AF_INET6):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                raw.connect(address)
            except OSError as exc:
                raw.close()
                errors.append(f"{address[0]} port {address[1]}: {exc.strerror or exc}")
                continue
            try:
                stream = (ssl.create_default_context().wrap_socket(raw, server_hostname=host)
                          if secure else raw)
                # the handshake only: frames are read and written by the loop (wsframes.py)
                ws = websocket.WebSocket(skip_utf8_validation=True)
                ws.connect(self.url, socket=stream)
            except websocket.WebSocketBadStatusException as exc:
                raw.close()
                hint = " (check WORKER_SECRET)" if exc.status_code in (401, 403) else ""
                self._post(("connect_failed", gen,
                            f"Lightning refused the connection: HTTP {exc.status_code}{hint}"))
                return
            except (OSError, websocket.WebSocketException) as exc:
                raw.close()
                errors.append(f"{address[0]} port {address[1]}: websocket handshake failed: "
                              f"{exc}")
                continue
            if self._stopped:
                stream.close()
                return
            stream.setblocking(False)
            self._post(("opened", gen, stream, address))
            return
        self._post(("connect_failed", gen, "; ".join(errors) or f"{host} has no addresses"))

    def _on_opened(self, gen: int, stream: socket.socket, address: Any) -> None:
        if gen != self._gen or self._stopped:
            stream.close()
            return
        self._sock, self._state, self.address = stream, "open", address
        self._parser, self._out = FrameParser(), bytearray()
        self._reconnect_tries = 0
        self._hb_ref, self._hb_answered = None, False
        now = time.monotonic()
        self._last_recv, self._hb_next = now, now + self.heartbeat_s
        self._arm(self._hb_next)
        log.info("connected to Lightning at %s via %s port %s", _redact(self.url),
                 address[0], address[1])
        self._loop.add_reader(stream.fileno(), self._on_readable)
        self._opened.set()
        if self.on_open is not None:
            _safe_call(self.on_open)
        for ch in list(self._channels.values()):
            if ch.wanted and ch.state != "leaving":
                self._send_join(ch)

    def _reconnect(self, url: str, why: str) -> None:
        self.url = url
        self._reconnect_tries = 0
        if self._state == "open":
            self._reconnect_now = True
            self._lose(why)
        elif self._state == "connecting":  # an attempt with the old url: let it go stale
            self._gen += 1
            self._state = "closed"
            self._start_connect()
        elif self._started:
            self._reconnect_at = time.monotonic()
            self._arm(self._reconnect_at)

    def _on_connect_failed(self, gen: int, message: str) -> None:
        if gen != self._gen:
            return
        self._state = "closed"
        delay = self._schedule_reconnect()
        log.error("could not connect to Lightning at %s: %s; retrying in %ss",
                  _redact(self.url), message, delay)

    def _schedule_reconnect(self) -> float:
        delay = self.reconnect_delays[min(self._reconnect_tries, len(self.reconnect_delays) - 1)]
        if self._reconnect_now:  # asked for (reconnect()), not a failure to back off from
            self._reconnect_now, delay = False, 0.0
        self._reconnect_tries += 1
        self._reconnect_at = time.monotonic() + delay
        self._arm(self._reconnect_at)
        return delay

    def _on_readable(self) -> None:
        """Read what has arrived (several frames at once, or part of a large one) and act on
        each whole message in order."""
        sock = self._sock
        view = memoryview(self._inbuf)
        while sock is not None and sock is self._sock:
            try:
                size = sock.recv_into(view)
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                self._lose(f"connection error: {exc}")
                return
            if not size:
                self._lose("closed by Lightning")
                return
            try:
                frames = self._parser.feed(view[:size])
            except FrameError as exc:
                self._lose(f"connection error: {exc}")
                return
            for opcode, payload in frames:
                if sock is not self._sock:
                    return
                try:
                    self._on_ws_frame(opcode, payload)
                except Exception:  # a bug here must not take the owner's loop down
                    log.exception("Lightning frame handling error (continuing)")
            if size < RECV_SIZE and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return

    def _on_ws_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                text = payload.decode("utf-8")  # invalid UTF-8 closes (RFC 6455 8.1)
            except UnicodeDecodeError as exc:
                self._lose(f"connection error: invalid UTF-8 in a text frame: {exc}")
                return
            self._on_frame(OP_TEXT, text)
        elif opcode == OP_BINARY:
            self._on_frame(OP_BINARY, payload)
        elif opcode == OP_PING:
            self._write(encode_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self._write(close_frame())
            self._lose("closed by Lightning" + (f" (close code {code})" if code else ""), code)

    def _lose(self, reason: str, code: int | None = None) -> None:
        """Drop the connection now; its consequences (resends, reconnect) follow as a command,
        as they would from a reader thread, so whatever is mid-way finishes first."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._loop.remove_reader(sock.fileno())
        self._loop.set_writer(sock.fileno(), None)
        if self._out:
            with contextlib.suppress(OSError):
                sock.send(self._out)
        with contextlib.suppress(OSError):
            sock.close()
        self._out = bytearray()
        self._loop.call_from_thread(self._handle, ("closed", self._gen, reason, code))

    def _on_closed(self, reason: str, code: int | None = None) -> None:
        self._state = "closed"
        if code == CLOSE_TOO_BIG:
            self._refuse_too_big()
        self._opened.clear()
        self._hb_ref = None
        for ref in list(self._joins):
            self._joins.pop(ref).join_deadline = None
        resend: dict[str, list[Push]] = {}
        for ref, push in sorted(self._pending.items(), key=lambda item: int(item[0])):
            del self._pending[ref]
            ch = self._channels.get(push.topic)
            if push.resend and ch is not None and ch.wanted and push.event != PHX_LEAVE:
                resend.setdefault(push.topic, []).append(push)
            else:
                push._settle(Reply("error", {"reason": "disconnected"}))
        for ch in self._channels.values():
            if ch.state in ("joined", "joining"):
                ch.state = "errored"
            ch.buffer[:0] = resend.get(ch.topic, [])
        if self._stopped:
            return
        delay = self._schedule_reconnect()
        log.warning("lost the connection to Lightning (%s); reconnecting in %ss", reason, delay)
        if self.on_close is not None:
            _safe_call(self.on_close, reason)

    def _refuse_too_big(self) -> None:
        """Lightning closed the socket as a frame was too big: the largest push waiting for a
        reply is that frame, or one at least as large (see the module's docstring)."""
        pending = [p for p in self._pending.values() if p.event != PHX_LEAVE]
        if not pending:
            return
        culprit = max(pending, key=lambda p: p.frame_bytes)
        assert culprit.ref is not None
        del self._pending[culprit.ref]
        log.error("Lightning closed the socket on %s to %s (%d bytes): message too big (close "
                  "code 1009); it is not sent again", culprit.event, culprit.topic,
                  culprit.frame_bytes)
        culprit._settle(Reply(TOO_BIG, {"reason": "message too big (close code 1009)",
                                        "frame_bytes": culprit.frame_bytes}))

    def _shutdown(self) -> None:
        self._stopped = True
        for push in list(self._pending.values()):
            push._settle(Reply("error", {"reason": "socket closed"}))
        self._pending.clear()
        for ch in self._channels.values():
            for push in ch.buffer + ([ch.first_join] if ch.first_join else []):
                push._settle(Reply("error", {"reason": "socket closed"}))
            ch.buffer.clear()
            ch.state = "closed"
        self._channels.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            self._loop.set_writer(sock.fileno(), None)
            try:  # what is still queued, then a close frame: best effort, briefly blocking
                sock.settimeout(1.0)
                sock.sendall(bytes(self._out) + close_frame())
            except OSError:
                log.debug("close frame not sent", exc_info=True)
            with contextlib.suppress(OSError):
                sock.close()
        self._state = "closed"
        self._opened.clear()

    def _heartbeat(self, now: float) -> None:
        # A server that answers heartbeats is heard from at least once per interval; two
        # intervals of silence mean a dead link (Phoenix's own server gives up after 60 s).
        # A server that never answered a heartbeat at all (the kit's lightning-mock) is let
        # be, rather than reconnecting every minute.
        if self._hb_answered and now - self._last_recv >= 2 * self.heartbeat_s:
            log.warning("no heartbeat reply from Lightning in %ss; reconnecting",
                        round(now - self._last_recv, 1))
            self._hb_next = now + self.heartbeat_s
            self._lose("heartbeat timeout")
            return
        self._hb_ref = self._next_ref()
        self._hb_next = now + self.heartbeat_s
        self._send([None, self._hb_ref, "phoenix", "heartbeat", {}])

    # -- channels ---------------------------------------------------------------------------------
    def _next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    def _send(self, frame: list[Any]) -> None:
        if self._sock is not None:
            self._write(encode_frame(_FRAME_ENCODER.encode(frame)))

    def _write(self, data: bytes) -> None:
        """Send now what the kernel takes; keep the rest and send it when writable (a large
        dataclip must not stall the loop, and frames must not interleave)."""
        sock = self._sock
        if sock is None:
            return
        if self._out:
            self._out += data
            return
        try:
            sent = sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        except OSError as exc:  # the loop sees the close and reconnects
            self._lose(f"connection error: {exc}")
            return
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self._loop.set_writer(sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._out)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            self._lose(f"connection error: {exc}")
            return
        del self._out[:sent]
        if not self._out:
            self._loop.set_writer(sock.fileno(), None)

    def _join(self, ch: Channel, push: Push) -> None:
        existing = self._channels.get(ch.topic)
        if existing is not None and existing is not ch:
            push._settle(Reply("error", {"reason": f"already joined {ch.topic}"}))
            return
        if ch.wanted:
            push._settle(Reply("error", {"reason": "join called twice"}))
            return
        self._channels[ch.topic] = ch
        ch.wanted = True
        ch.first_join = push
        if self._state == "open":
            self._send_join(ch)

    def _send_join(self, ch: Channel) -> None:
        if ch.join_ref is not None:
            self._joins.pop(ch.join_ref, None)
        ch.join_ref = self._next_ref()
        ch.state, ch.rejoin_at = "joining", None
        ch.join_deadline = time.monotonic() + ch.timeout
        self._arm(ch.join_deadline)
        self._joins[ch.join_ref] = ch
        self._send([ch.join_ref, ch.join_ref, ch.topic, PHX_JOIN, ch.join_payload])

    def _join_timed_out(self, ch: Channel) -> None:
        log.warning("joining %s timed out after %ss; will retry", ch.topic, ch.timeout)
        if ch.join_ref is not None:
            self._joins.pop(ch.join_ref, None)
            self._send([ch.join_ref, self._next_ref(), ch.topic, PHX_LEAVE, {}])
            # that join is abandoned: a late reply or phx_close of it (Lightning handling the
            # join and this leave after all) must not close the channel we rejoin
            ch.join_ref = None
        ch.join_deadline = None
        ch.state = "errored"
        self._after_join(ch, Reply("timeout"))

    def _after_join(self, ch: Channel, reply: Reply) -> None:
        rejoined = ch.joined_before
        if reply.ok:
            ch.state, ch.rejoin_tries, ch.joined_before = "joined", 0, True
        else:
            delays = self.rejoin_delays
            ch.rejoin_at = time.monotonic() + delays[min(ch.rejoin_tries, len(delays) - 1)]
            self._arm(ch.rejoin_at)
            ch.rejoin_tries += 1
        if ch.first_join is not None:
            ch.first_join._settle(reply)
            ch.first_join = None
        if ch.on_join is not None:
            _safe_call(ch.on_join, ch, reply, rejoined)
        if reply.ok and ch.state == "joined":
            pending, ch.buffer = ch.buffer, []
            for push in pending:
                self._send_push(ch, push)

    def _push(self, ch: Channel, push: Push) -> None:
        if not ch.wanted or self._channels.get(ch.topic) is not ch:
            log.warning("%s on %s refused: the channel is not joined", push.event, ch.topic)
            push._settle(Reply("error", {"reason": "channel not joined"}))
        elif ch.state == "joined" and self._state == "open":
            self._send_push(ch, push)
        else:
            ch.buffer.append(push)

    def _send_push(self, ch: Channel, push: Push) -> None:
        push.ref = self._next_ref()
        self._pending[push.ref] = push
        if self._sock is None:
            return
        if push.encoded is None:
            frame = encode_frame(_FRAME_ENCODER.encode(
                [ch.join_ref, push.ref, ch.topic, push.event, push.payload]))
        else:
            head = _FRAME_ENCODER.encode([ch.join_ref, push.ref, ch.topic, push.event])
            frame = encode_frame(f"{head[:-1]},{push.encoded}]")
        push.frame_bytes = len(frame)
        self._write(frame)

    def _leave(self, ch: Channel, push: Push) -> None:
        ch.wanted, ch.rejoin_at = False, None
        for buffered in ch.buffer:
            buffered._settle(Reply("error", {"reason": "channel left"}))
        ch.buffer.clear()
        if ch.first_join is not None:
            ch.first_join._settle(Reply("error", {"reason": "channel left"}))
            ch.first_join = None
        if ch.state in ("joined", "joining") and self._state == "open":
            if ch.state == "joining" and ch.join_ref is not None:
                self._joins.pop(ch.join_ref, None)
                ch.join_deadline = None
            ch.state = "leaving"
            push.ref = self._next_ref()
            push.callback = _then(push.callback, lambda _p: self._forget(ch))
            self._pending[push.ref] = push
            self._send([ch.join_ref, push.ref, ch.topic, PHX_LEAVE, {}])
        else:
            self._forget(ch)
            push._settle(Reply("ok", {}))

    def _forget(self, ch: Channel) -> None:
        ch.state, ch.join_deadline = "closed", None
        if self._channels.get(ch.topic) is ch:
            del self._channels[ch.topic]

    # -- incoming -----------------------------------------------------------------------------------
    def _on_frame(self, opcode: int, data: bytes | str) -> None:
        self._last_recv = time.monotonic()
        try:
            if opcode == OP_BINARY:
                message = decode_binary(data)
            else:
                message = json.loads(data)
                if not isinstance(message, list) or len(message) != 5:
                    raise ValueError("not a [join_ref, ref, topic, event, payload] array")
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            log.warning("malformed frame from Lightning ignored (%s): %.200r", exc, data)
            return
        self._dispatch(*message)

    def _dispatch(self, join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> None:
        if not isinstance(event, str) or not isinstance(topic, str):
            log.warning("malformed frame from Lightning ignored: topic %r event %r", topic, event)
            return
        if event == PHX_REPLY or event.startswith("chan_reply_"):
            if not ref and event.startswith("chan_reply_"):
                ref = event[len("chan_reply_"):]
            self._on_reply(str(ref), topic, payload)
            return
        ch = self._channels.get(topic)
        if ch is None:
            log.debug("%s on %s: no such channel here; ignored", event, topic)
            return
        if join_ref is not None and join_ref != ch.join_ref:
            log.debug("%s on %s for an earlier join (%s); ignored", event, topic, join_ref)
            return
        if event == PHX_ERROR:
            self._on_channel_error(ch)
        elif event == PHX_CLOSE:
            self._on_channel_close(ch)
        elif ch.state == "joined" and ch.on_message is not None:
            _safe_call(ch.on_message, event, payload)

    def _on_reply(self, ref: str, topic: str, payload: Any) -> None:
        if not isinstance(payload, dict) or payload.get("status") not in ("ok", "error"):
            log.warning("malformed reply from Lightning on %s ignored: %.200r", topic, payload)
            return
        reply = Reply(payload["status"], payload.get("response"))
        if topic == "phoenix":
            if ref == self._hb_ref:
                self._hb_ref, self._hb_answered = None, True
            return
        ch = self._joins.get(ref)
        if ch is not None and ch.topic == topic:
            del self._joins[ref]
            ch.join_deadline = None
            if not reply.ok:
                ch.state = "errored"
                log.warning("Lightning refused to join %s: %s", topic,
                            describe_failure(PHX_JOIN, reply))
            self._after_join(ch, reply)
            return
        push = self._pending.get(ref)
        if push is None or push.topic != topic:
            log.debug("reply %s on %s matches no waiting push (late or unknown)", ref, topic)
            return
        del self._pending[ref]
        push._settle(reply)

    def _on_channel_error(self, ch: Channel) -> None:
        """The channel's process on Lightning died: pushes in flight will never be answered."""
        log.warning("channel %s crashed on Lightning's side (phx_error); rejoining", ch.topic)
        for ref, push in list(self._pending.items()):
            if push.topic == ch.topic and push.event != PHX_LEAVE:
                del self._pending[ref]
                push._settle(Reply("error", {"reason": "phx_error"}))
        if ch.state == "leaving":
            return
        ch.state = "errored"
        self._after_join(ch, Reply("error", {"reason": "phx_error"}))

    def _on_channel_close(self, ch: Channel) -> None:
        if ch.state == "leaving":
            return  # our own leave; its reply settles it
        log.warning("Lightning closed channel %s", ch.topic)
        ch.wanted, ch.rejoin_at = False, None
        for ref, push in list(self._pending.items()):
            if push.topic == ch.topic:
                del self._pending[ref]
                push._settle(Reply("error", {"reason": "channel closed"}))
        for push in ch.buffer:
            push._settle(Reply("error", {"reason": "channel closed"}))
        ch.buffer.clear()
        self._forget(ch)
        if ch.on_close is not None:
            _safe_call(ch.on_close, ch, "closed by Lightning")


def _then(first: Callable[[Push], None] | None,
          second: Callable[[Push], None]) -> Callable[[Push], None]:
    def both(push: Push) -> None:
        second(push)
        if first is not None:
            first(push)
    return both


def decode_binary(data: bytes) -> list[Any]:
    """A V2 binary frame → ``[join_ref, ref, topic, event, payload]`` (payload stays bytes).

    Replies (kind 1) become ``phx_reply`` with ``{"status", "response": <bytes>}``.
    """
    kind = data[0]
    if kind == KIND_REPLY:
        sizes = data[1:5]
        fields, pos = [], 5
        for size in sizes:
            fields.append(data[pos:pos + size].decode("utf-8"))
            pos += size
        join_ref, ref, topic, status = fields
        return [join_ref or None, ref, topic, PHX_REPLY,
                {"status": status, "response": bytes(data[pos:])}]
    if kind == KIND_PUSH:
        jr_size, topic_size, event_size = data[1:4]
        pos = 4
        join_ref = data[pos:pos + jr_size].decode("utf-8")
        pos += jr_size
        topic = data[pos:pos + topic_size].decode("utf-8")
        pos += topic_size
        event = data[pos:pos + event_size].decode("utf-8")
        pos += event_size
        return [join_ref or None, None, topic, event, bytes(data[pos:])]
    if kind == KIND_BROADCAST:
        topic_size, event_size = data[1:3]
        topic = data[3:3 + topic_size].decode("utf-8")
        event = data[3 + topic_size:3 + topic_size + event_size].decode("utf-8")
        return [None, None, topic, event, bytes(data[3 + topic_size + event_size:])]
    raise ValueError(f"unknown binary frame kind {kind}")


def _redact(url: str) -> str:
    """The URL without its token, for logs."""
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if not p.startswith("token="))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
