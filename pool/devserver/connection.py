"""One worker socket: the upgrade checks, then Phoenix routing of every frame it sends.

Like Phoenix, each topic is served in order by its own task (Lightning runs one process per
channel; heartbeats have the ``phoenix`` topic to themselves), so a held reply on one run
channel delays neither heartbeats nor other channels — and heartbeats can be faulted too.
A frame the serializer cannot decode closes the socket (Phoenix's socket process would crash);
a handler that matches no clause crashes only its channel (``phx_error``). Any other failure in
a handler is logged and answered with an error reply: the server itself never goes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pool.devserver import phoenix
from pool.devserver.core import ChannelCrash, Core, Reply
from pool.devserver.queue_channel import TOPIC as QUEUE_TOPIC
from pool.devserver.queue_channel import handle_claim, join_queue
from pool.devserver.run_channel import handle_run_event, join_run
from pool.devserver.runs import Run, now_us
from pool.devserver.tokens import TokenRefused, verify_worker_token

log = logging.getLogger("pool.devserver")
SOCKET_PATH = "/worker/websocket"
TO_WORKER, FROM_WORKER = "lightning->worker", "worker->lightning"


def _refuse(status: HTTPStatus, reason: str) -> Response:
    body = (reason + "\n").encode()
    headers = Headers([("Content-Type", "text/plain; charset=utf-8"),
                       ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)


def _verify_worker(token: str, secrets: list[str]) -> tuple[dict, tuple[HTTPStatus, str] | None]:
    """The token's claims if any accepted secret signed it, else the refusal (the first
    secret's reason: the current one)."""
    reasons = []
    for secret in secrets:
        try:
            return verify_worker_token(token, secret), None
        except TokenRefused as exc:
            reasons.append(str(exc))
    return {}, (HTTPStatus.UNAUTHORIZED, f"Unauthorized: {reasons[0]}")


def upgrade_checker(core: Core) -> Any:
    """``process_request`` for websockets: path, ``vsn=2.0.0`` and the worker token."""

    def check(connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        params = {key: values[0] for key, values in parse_qs(url.query).items()}
        refusal: tuple[HTTPStatus, str] | None = None
        if url.path != SOCKET_PATH:
            refusal = HTTPStatus.NOT_FOUND, f"no socket at {url.path}; the worker socket is {SOCKET_PATH}"
        elif time.monotonic() < core.refuse_until:
            refusal = HTTPStatus.SERVICE_UNAVAILABLE, "injected fault: Lightning is unreachable"
        elif params.get("vsn") != "2.0.0":
            # Phoenix answers 403 when no serializer matches the requested version
            refusal = HTTPStatus.FORBIDDEN, (
                f"vsn=2.0.0 is required (got vsn={params.get('vsn')!r}): this server speaks only "
                "the Phoenix V2 serializer, which fetch:dataclip's binary reply needs")
        else:
            claims, refusal = _verify_worker(params.get("token", ""), core.accepted_secrets)
        if refusal is not None:
            log.warning("refused a worker connection (%s): %s", refusal[0].value, refusal[1])
            core.reject(None, None, "connect", {"path": url.path, "params": sorted(params)},
                        f"HTTP {refusal[0].value}: {refusal[1]}")
            return _refuse(*refusal)
        connection.poolctl_info = {  # type: ignore[attr-defined]
            "worker_id": claims.get("worker_id"), "worker_version": params.get("worker_version"),
            "api_version": params.get("api_version"), "remote": str(connection.remote_address),
            "connected_us": now_us(), "closed_us": None}
        return None

    return check


class WorkerConnection:
    """Routes one socket's frames to its channels and sends their replies."""

    def __init__(self, core: Core, ws: ServerConnection) -> None:
        self.core = core
        self.ws = ws
        self.info: dict = getattr(ws, "poolctl_info", {})
        self.id = core.add_connection(self.info)
        self.joined: dict[str, str | None] = {}   # topic -> join_ref
        self.runs: dict[str, Run] = {}            # joined run topics
        self.inboxes: dict[str, asyncio.Queue] = {}
        self.tasks: set[asyncio.Task] = set()
        self.closed = False

    async def serve(self) -> None:
        self.core.live.add(self)
        log.info("worker connected: conn %s, worker %s (version %s, api %s)", self.id,
                 self.info.get("worker_id"), self.info.get("worker_version"),
                 self.info.get("api_version"))
        try:
            while True:
                try:
                    async with asyncio.timeout(self.core.idle_timeout_s):
                        data = await self.ws.recv()
                except TimeoutError:
                    log.warning("conn %s: nothing received for %ss, closing (Phoenix's "
                                "transport timeout)", self.id, self.core.idle_timeout_s)
                    await self.ws.close(1000, "idle timeout")
                    break
                except ConnectionClosed:
                    self._note_too_big()
                    break
                self._route(data)
        finally:
            self.closed = True
            self.core.live.discard(self)
            self.info["closed_us"] = now_us()
            for inbox in self.inboxes.values():
                inbox.put_nowait(None)
            log.info("worker disconnected: conn %s", self.id)

    def _note_too_big(self) -> None:
        """A frame over ``max_frame_bytes`` closed the socket with 1009, as Lightning's
        ``max_frame_size`` does: recorded as a rejection so tests see why."""
        sent = self.ws.protocol.close_sent
        if sent is not None and sent.code == 1009:
            log.warning("conn %s: closed with 1009: %s", self.id, sent.reason)
            self.core.reject(self.id, None, "frame", None,
                             f"message too big, socket closed with 1009: {sent.reason}")

    # -- receiving ---------------------------------------------------------------------------

    def _route(self, data: str | bytes) -> None:
        received = now_us()
        if isinstance(data, bytes):
            self.core.record_frame(FROM_WORKER, self.id, {"binary": True, "size": len(data)})
            self._malformed("binary frames from a worker are not part of the protocol", 1003)
            return
        try:
            msg = phoenix.decode(data)
        except phoenix.MalformedFrame as exc:
            self.core.record_frame(FROM_WORKER, self.id, {"malformed": data[:2000]})
            self._malformed(f"malformed frame: {exc}", 1007)
            return
        self.core.record_frame(FROM_WORKER, self.id, msg.as_list())
        inbox = self.inboxes.get(msg.topic)
        if inbox is None:
            inbox = self.inboxes[msg.topic] = asyncio.Queue()
            self._spawn(self._serve_topic(inbox))
        inbox.put_nowait((msg, received))

    def _malformed(self, reason: str, code: int) -> None:
        log.warning("conn %s: %s; closing the socket", self.id, reason)
        self.core.reject(self.id, None, None, None, reason)
        self._spawn(self.ws.close(code, reason[:120]))

    async def _serve_topic(self, inbox: asyncio.Queue) -> None:
        while (item := await inbox.get()) is not None:
            if not self.closed:  # Phoenix drops what a dead socket's channels had not handled
                await self._handle(*item)

    async def _handle(self, msg: phoenix.Message, received: int) -> None:
        fault = self.core.faults.take(msg.event, msg.topic)
        if fault is not None and fault.kind == "drop":
            log.warning("conn %s: fault: dropping the socket on %s %s", self.id, msg.topic, msg.event)
            self.core.reject(self.id, msg.topic, msg.event, msg.payload,
                             "injected fault: socket dropped before the reply")
            self._record_run_event(msg, received, {"status": "dropped", "response": None})
            if fault.seconds:
                self.core.refuse_until = time.monotonic() + fault.seconds
            self.abort()
            return
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
            if self.closed:  # as Phoenix: a dead socket's unhandled messages are dropped
                return
        if fault is not None and fault.kind == "error":
            reply = Reply("error", fault.response, detail="injected fault: error reply")
        else:
            try:
                reply = self._dispatch(msg)
            except ChannelCrash as exc:
                self._crash(msg, received, str(exc))
                return
            except Exception as exc:  # a bug here must cost one reply, not the server
                log.exception("conn %s: handler failed on %s %s", self.id, msg.topic, msg.event)
                reply = Reply("error", {"reason": f"dev server error: {exc}"})
        if reply.status != "ok":
            log.info("conn %s: refused %s on %s: %s", self.id, msg.event, msg.topic,
                     reply.detail or json.dumps(reply.response, default=str)[:300])
            self.core.reject(self.id, msg.topic, msg.event, msg.payload,
                             reply.detail or reply.response)
        recorded = {"binary": True, "size": len(reply.binary)} if reply.binary is not None \
            else reply.response
        self._record_run_event(msg, received, {"status": reply.status, "response": recorded})
        if fault is not None and fault.kind == "hold":
            await asyncio.sleep(fault.seconds)
        await self._send_reply(msg, reply)

    def _dispatch(self, msg: phoenix.Message) -> Reply:
        topic, event = msg.topic, msg.event
        if topic == "phoenix":  # the socket's own topic: heartbeats, never joined
            return Reply("ok", {}) if event == "heartbeat" else self._unmatched(msg)
        if event == "phx_join":
            return self._join(msg)
        if event == "phx_leave":
            if topic in self.joined:
                join_ref = self.joined.pop(topic)
                self.runs.pop(topic, None)
                return Reply("ok", {}, then_frame=[join_ref, join_ref, topic, "phx_close", {}])
            return Reply("ok", {})  # Phoenix acknowledges leaving a topic it does not know
        if topic not in self.joined:
            return self._unmatched(msg)
        if msg.join_ref is not None and msg.join_ref != self.joined[topic]:
            return Reply("error", {"reason": "stale join_ref"},
                         detail=f"join_ref {msg.join_ref} is not the current join "
                                f"{self.joined[topic]} of {topic}")
        if topic == QUEUE_TOPIC:
            if event == "claim":
                return handle_claim(self.core, msg)
            return Reply("error", {"reason": f"unknown event {event!r} on {QUEUE_TOPIC}"})
        return handle_run_event(self.core, self.runs[topic], msg)

    def _join(self, msg: phoenix.Message) -> Reply:
        topic = msg.topic
        run: Run | None = None
        if topic == QUEUE_TOPIC:
            reply = join_queue(self.info, msg)
        elif topic.startswith("run:"):
            reply, run = join_run(self.core, msg)
        else:
            reply = self._unmatched(msg)
        if reply.status == "ok":
            self.joined[topic] = msg.join_ref
            if run is not None:
                self.runs[topic] = run
        else:
            self.joined.pop(topic, None)
            self.runs.pop(topic, None)
        return reply

    @staticmethod
    def _unmatched(msg: phoenix.Message) -> Reply:
        return Reply("error", {"reason": "unmatched topic"},
                     detail=f"{msg.event} on {msg.topic}, a topic this socket has not joined")

    def _crash(self, msg: phoenix.Message, received: int, reason: str) -> None:
        log.warning("conn %s: channel %s crashed on %s: %s", self.id, msg.topic, msg.event, reason)
        self.core.reject(self.id, msg.topic, msg.event, msg.payload, f"channel crash: {reason}")
        self._record_run_event(msg, received, {"status": "phx_error", "response": reason})
        join_ref = self.joined.pop(msg.topic, msg.join_ref)
        self.runs.pop(msg.topic, None)
        self._spawn(self._send([join_ref, join_ref, msg.topic, "phx_error", {}]))

    def _record_run_event(self, msg: phoenix.Message, received: int, reply: dict) -> None:
        if not msg.topic.startswith("run:"):
            return
        run = self.runs.get(msg.topic) or self.core.book.get(msg.topic[4:])
        if run is None:
            return
        with self.core.book.lock:
            run.events.append({"event": msg.event, "payload": msg.payload, "time_us": received,
                               "reply": reply, "conn": self.id})

    # -- sending -----------------------------------------------------------------------------

    async def _send_reply(self, msg: phoenix.Message, reply: Reply) -> None:
        if reply.binary is not None:
            frame: Any = phoenix.binary_reply(msg, reply.status, reply.binary)
            record: Any = {"binary": True, "kind": phoenix.REPLY_KIND, "join_ref": msg.join_ref,
                           "ref": msg.ref, "topic": msg.topic, "status": reply.status,
                           "payload": reply.binary.decode(errors="replace")}
        else:
            frame = record = phoenix.reply(msg, reply.status, reply.response)
        sent = await self._send(frame, record)
        callback = reply.on_sent if sent else reply.on_unsent
        if callback is not None:
            callback()
        if sent and reply.then_frame is not None:
            await self._send(reply.then_frame)

    async def _send(self, frame: Any, record: Any = None) -> bool:
        if self.closed:
            return False
        self.core.record_frame(TO_WORKER, self.id, frame if record is None else record)
        try:
            await self.ws.send(frame if isinstance(frame, bytes) else json.dumps(frame))
        except ConnectionClosed:
            return False
        return True

    def push(self, topic: str, event: str, payload: Any) -> None:
        """A server push on a joined channel (``work-available``); no-op if not joined."""
        if topic in self.joined and not self.closed:
            self._spawn(self._send(phoenix.push(self.joined[topic], topic, event, payload)))

    def abort(self) -> None:
        """Cut the TCP connection with no closing handshake, as a crashed Lightning would."""
        self.closed = True
        with contextlib.suppress(Exception):
            self.ws.transport.abort()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
