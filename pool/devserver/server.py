"""A strict Lightning dev server: passing against it should mean passing against Lightning.

What it is
    A Python stand-in for OpenFn Lightning's worker side, for local development, the project's
    tests, ``bench`` and ``tune``. It speaks Phoenix channels V2 at ``/worker/websocket`` the way
    real Lightning does — not the way the kit's lightning-mock does: replies are ``phx_reply``
    with ``{status, response}``, ``fetch:dataclip`` is answered with a binary frame, heartbeats
    are answered, ``phx_leave`` gets ``ok`` then ``phx_close``, a push to a topic the socket has
    not joined gets ``{"reason": "unmatched topic"}``.

Use it from Python (every test of the project does)::

    with DevServer() as lightning:                   # random ports, fresh secret and RSA keys
        env = lightning.worker_env()                 # WORKER_SECRET, WORKER_LIGHTNING_PUBLIC_KEY,
                                                     # WORKER_LIGHTNING_SERVICE_URL
        run_id = lightning.enqueue(plan, credentials={...}, dataclips={...}, queue="manual")
        run = lightning.wait_for_run(run_id, timeout=30)
        assert run["state"] == "success", lightning.rejections

or from a shell: ``poolctl dev-server --port 4000`` prints the worker's environment and serves
the HTTP dev API on port 4001 (``POST /api/runs``, ``GET /api/runs[/<id>[/wait]]``,
``POST /api/faults``, ``GET /api/health``; see ``pool/devserver/api.py``).

What it checks, like Lightning (reference: shared/reference/lightning-protocol.md)
    * Connect: ``vsn=2.0.0`` (else HTTP 403, Phoenix's answer to a serializer it lacks); the
      worker token — HS256 with the secret used as-is, ``iss`` = ``urn:openfn:worker``, ``iat``
      and ``worker_id`` present, no future ``nbf`` — else HTTP 401 on the upgrade, as newer
      Lightning. ``worker_version``/``api_version`` are recorded in ``connections``.
    * ``worker:queue``: ``claim`` must carry ``demand`` and ``worker_name`` (else the channel
      crashes: ``phx_error``, no reply); ``queues`` is honoured in order, ``*`` meaning any.
      Each run handed out carries an RS256 run token (``iss: Lightning``, ``id``,
      ``sub: run:<id>``, ``nbf``, ``exp``). A claimed run not joined within ``join_timeout_s``
      (30 s) goes back to available; so does a claim whose socket died before its reply.
      Enqueueing pushes ``work-available`` to every joined queue channel.
    * ``run:<id>`` join: token signature, ``iss``, ``id``, ``sub``, ``nbf``, ``exp`` →
      ``{"reason": "unauthorized"}`` (so a rejoin with an expired token is refused); unknown
      run → ``{"reason": "not_found"}``; a run already final → ``{"reason": "already in
      completed state"}`` (stricter than Lightning, which accepts that join and refuses every
      event after it).
    * The janitor (Lightning's ``Janitor``): every ``janitor_interval_s`` a run claimed longer
      ago than its timeout (``run_timeout_ms``, else 300 s) plus ``grace_period_s`` (60 s,
      ``RUN_GRACE_PERIOD_SECONDS``; set it short in tests) and not final becomes ``lost``, with
      ``error_type`` ``LostAfterClaim`` or ``LostAfterStart``; its open steps are lost too.
    * Run events (``run_channel.py``, ``validation.py``): timestamps must cast (16-digit µs or
      13-digit ms strings, or int ms); ``run:start`` only from claimed; ``step:start`` needs a
      UUID ``step_id``, a ``job_id`` of the plan, a known ``input_dataclip_id``; log lines need
      a non-null list ``message``, a known ``level``, ``source`` ≤ 8 chars, a ``timestamp``, a
      known ``step_id``; ``run:batch_logs`` without ``logs`` crashes the channel;
      ``step:complete`` needs a started step, a valid ``reason`` (null error fields on success),
      ``output_dataclip`` as a JSON string, both dataclip fields or neither when dataclips are
      saved, a UUID ``output_dataclip_id``; ``run:complete`` only known keys, a valid reason, an
      existing ``final_dataclip_id``; nothing after ``run:complete`` (a second one gets
      ``{"state": ["already in completed state"]}``); unknown events get an error reply.

What it records
    ``frames`` (every frame both ways, like the transcripts), ``rejections`` (every refusal with
    its reason — assert it is empty after a good run), ``connections``, and per run
    (``run(id)``): state, reason, error type/message, final state, events with their receive
    time and reply, steps, dataclips, and the times enqueued/claimed/started/completed (µs) for
    benchmarks (enqueue→claim wait, claim→complete).

Faults, for the tests of later issues
    ``drop_sockets()``; ``drop_socket_on(event, refuse_for=0)``; ``refuse_connections_for(s)``;
    ``reply_error_on(event, response)``;
    ``hold_reply_on(event, seconds)`` (the event is handled, its reply waits);
    ``stall_on(event, seconds)`` (the event waits unhandled; a socket that dies meanwhile never
    had it handled, e.g. a ``phx_join`` that never joins); each optionally
    limited to one run and fired ``times`` times; ``set_run_token_lifetime(seconds)`` for
    short-lived run tokens.

Not modelled: usage limits, OAuth refresh, log scrubbing, webhook replies.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from pool.devserver.api import DevApi
from pool.devserver.connection import WorkerConnection, upgrade_checker
from pool.devserver.core import GRACE_PERIOD_S, Core
from pool.devserver.plans import InvalidPlan
from pool.devserver.runs import Run
from pool.devserver.tokens import RunTokens, generate_secret

__all__ = ["DevServer", "InvalidPlan"]

log = logging.getLogger("pool.devserver")
# Lightning's endpoint drops inbound frames over ~11 MB (max_frame_size: 11_000_000)
MAX_FRAME_BYTES = 11_000_000


class DevServer:
    """The dev server: a WebSocket endpoint and an HTTP dev API, each in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_port: int | None = 0,
                 secret: str | None = None, private_key_b64: str | None = None,
                 run_token_lifetime_s: float | None = None, join_timeout_s: float = 30.0,
                 idle_timeout_s: float = 60.0, record_frames: bool = True,
                 tls: ssl.SSLContext | None = None, max_runs_per_claim: int | None = None,
                 max_frame_bytes: int = MAX_FRAME_BYTES, grace_period_s: float = GRACE_PERIOD_S,
                 janitor_interval_s: float = 1.0) -> None:
        """``record_frames=False`` keeps ``frames`` empty: soak runs send millions of frames.
        ``tls``: serve ``wss://`` with this server context (as Lightning behind TLS).
        ``max_runs_per_claim``: hand out at most that many runs per claim whatever the demand
        (OpenFn's lightning-mock gives one). ``max_frame_bytes``: the largest frame accepted
        from a worker; a larger one closes the socket with code 1009, as Lightning's
        ``max_frame_size`` does."""
        self.host = host
        self.tls = tls
        self.port = port
        self.api_port = api_port
        self.secret = secret or generate_secret()
        tokens = RunTokens(private_key_b64)
        self.private_key_b64 = tokens.private_key_b64
        self.public_key_b64 = tokens.public_key_b64
        self.core = Core(self.secret, tokens, run_token_lifetime_s, join_timeout_s, idle_timeout_s,
                         grace_period_s)
        self.janitor_interval_s = janitor_interval_s
        self.core.record_frames = record_frames
        self.core.max_runs_per_claim = max_runs_per_claim
        self.max_frame_bytes = max_frame_bytes
        self.frames = self.core.frames
        self.rejections = self.core.rejections
        self.connections = self.core.connections
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Future | None = None
        self._api: DevApi | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> DevServer:
        """Serve in a background thread; return once both ports are listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as exc:  # surfaced to start()'s caller below
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=main, name="devserver-ws", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        if self.api_port is not None:
            self._api = DevApi(self, self.host, self.api_port)
            self.api_port = self._api.port
        return self

    async def _serve(self, ready: threading.Event) -> None:
        self.core.loop = asyncio.get_running_loop()
        self._stopping = self.core.loop.create_future()
        async with serve(self._handle, self.host, self.port, process_request=upgrade_checker(self.core),
                         max_size=self.max_frame_bytes, ping_interval=None, close_timeout=2,
                         compression="deflate", ssl=self.tls) as server:
            self.port = server.sockets[0].getsockname()[1]
            janitor = asyncio.create_task(self._janitor())
            ready.set()
            await self._stopping
            janitor.cancel()
            for conn in list(self.core.live):  # stopping is Lightning going away: no goodbyes
                conn.abort()

    async def _janitor(self) -> None:
        """Mark runs lost as Lightning's janitor does (``RunBook.sweep_lost``)."""
        while True:
            await asyncio.sleep(self.janitor_interval_s)
            for run in self.core.book.sweep_lost(self.core.lost_after_s):
                log.warning("janitor: run %s is lost (%s): not finished %ss after its claim",
                            run.id, run.error_type, round(self.core.lost_after_s(run), 3))

    async def _handle(self, ws: ServerConnection) -> None:
        await WorkerConnection(self.core, ws).serve()

    def stop(self) -> None:
        """Close every socket and both ports; safe to call twice."""
        if self._api is not None:
            self._api.stop()
            self._api = None
        loop, stopping = self.core.loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: stopping.done() or stopping.set_result(None))
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def _public_host(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str:
        """The worker's ``WORKER_LIGHTNING_SERVICE_URL``."""
        scheme = "wss" if self.tls is not None else "ws"
        return f"{scheme}://{self._public_host}:{self.port}/worker"

    @property
    def api_url(self) -> str:
        return f"http://{self._public_host}:{self.api_port}"

    def worker_env(self) -> dict[str, str]:
        return {"WORKER_SECRET": self.secret,
                "WORKER_LIGHTNING_PUBLIC_KEY": self.public_key_b64,
                "WORKER_LIGHTNING_SERVICE_URL": self.url}

    # -- runs --------------------------------------------------------------------------------

    def enqueue(self, plan: dict, credentials: dict | None = None, dataclips: dict | None = None,
                queue: str = "manual", wakeup: bool = True) -> str:
        """Store a plan as a new available run and return its id; ``InvalidPlan`` if bad."""
        run = self.core.book.enqueue(plan, credentials, dataclips, queue)
        log.info("enqueued run %s on queue %s", run.id, queue)
        if wakeup:
            self.push_work_available()
        return run.id

    def _get(self, run_id: str) -> Run:
        run = self.core.book.get(run_id)
        if run is None:
            raise KeyError(f"no run {run_id!r}")
        return run

    def run(self, run_id: str) -> dict:
        return self.core.book.snapshot(self._get(run_id))

    def runs(self) -> list[dict]:
        with self.core.book.lock:
            runs = list(self.core.book.runs.values())
        return [self.core.book.snapshot(run) for run in runs]

    def wait_for_run(self, run_id: str, timeout: float = 30) -> dict:
        """Block until the run is final and return it; ``TimeoutError`` otherwise."""
        return self.core.book.snapshot(self.core.book.wait_final(run_id, timeout))

    def push_work_available(self) -> None:
        self.core.push_work_available()

    # -- faults ------------------------------------------------------------------------------

    def drop_sockets(self) -> None:
        """Cut every worker socket now."""
        loop = self.core.loop
        if loop is None:
            return

        def cut() -> None:
            for conn in list(self.core.live):
                log.warning("fault: dropping conn %s", conn.id)
                conn.abort()

        loop.call_soon_threadsafe(cut)

    def drop_socket_on(self, event: str, run_id: str | None = None, times: int = 1,
                       refuse_for: float = 0.0) -> None:
        """Cut the socket when ``event`` arrives; with ``refuse_for``, Lightning then stays
        unreachable (new sockets refused) that many seconds."""
        self.core.faults.arm("drop", event, run_id, times, seconds=refuse_for)

    def refuse_connections_for(self, seconds: float) -> None:
        """Lightning unreachable for ``seconds``: every socket is cut now and new ones are
        refused (HTTP 503) until then."""
        self.core.refuse_until = time.monotonic() + seconds
        self.drop_sockets()

    def reply_error_on(self, event: str, response: Any = "injected", run_id: str | None = None,
                       times: int = 1) -> None:
        self.core.faults.arm("error", event, run_id, times, response=response)

    def hold_reply_on(self, event: str, seconds: float, run_id: str | None = None,
                      times: int = 1) -> None:
        self.core.faults.arm("hold", event, run_id, times, seconds=seconds)

    def rotate_secret(self, secret: str | None = None, accept_old: bool = False) -> str:
        """Switch to a new worker secret (generated if not given) and return it. Sockets open
        now stay open (Lightning checks the token when a socket connects); new ones must sign
        with the new secret — or either, with ``accept_old``, as a rolling switch would."""
        new = secret or generate_secret()
        old = self.core.secret
        self.secret = self.core.secret = new
        self.core.accepted_secrets = [new, old] if accept_old and old != new else [new]
        log.info("worker secret rotated%s", " (the old one still accepted)" if accept_old else "")
        return new

    def stall_on(self, event: str, seconds: float, run_id: str | None = None,
                 times: int = 1) -> None:
        """Leave ``event`` unhandled for ``seconds`` (then handle it, unless its socket died)."""
        self.core.faults.arm("stall", event, run_id, times, seconds=seconds)

    def set_run_token_lifetime(self, seconds: float | None) -> None:
        """Run tokens minted from now on live ``seconds`` (None: Lightning's default)."""
        self.core.run_token_lifetime_s = seconds
