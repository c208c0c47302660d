"""systemd's readiness protocol (``sd_notify(3)``), spoken by the supervisor itself.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a unix datagram socket (a path, or an
abstract address written ``@name``); each datagram is newline-separated ``KEY=VALUE`` fields.
What the pool tells it, and when:

* ``READY=1`` once the pool can take work — the queue channel joined and an executor warm
  (the same test as ``/readyz``) — so ``systemctl start`` returns, and units ordered after
  this one start, only when runs can actually be claimed;
* ``EXTEND_TIMEOUT_USEC`` every few seconds until then, from the arbiter loop: a pool that is
  alive and waiting for an unreachable Lightning is never killed and restarted in a loop by
  ``TimeoutStartSec``, while a wedged loop still is (its extensions stop);
* ``STATUS=`` whenever what it says changes (executors busy, runs in flight, connecting,
  draining), for ``systemctl status``;
* ``STOPPING=1`` when the pool begins to stop (SIGTERM, ``poolctl stop``): it exits once its
  runs are reported. ``poolctl drain`` alone is not a stop (the pool stays up, claiming
  nothing), so it shows in ``STATUS`` only — ``STOPPING=1`` would start systemd's stop timer;
* ``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd ≥ 253 requires it with ``RELOADING=1``) on
  SIGHUP, then ``READY=1`` again once the new generation of executors has booted;
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC``, from a timer of the arbiter loop (so it proves
  the loop turns), when systemd asked for it (``WatchdogSec=``) for this pid (``WATCHDOG_PID``,
  when set, must be ours).

Nothing is sent when ``$NOTIFY_SOCKET`` is unset. The variable is left in the environment:
the supervisor may re-execute itself in place (same pid) and must find it again, and with
``NotifyAccess=main`` systemd ignores datagrams from any other pid anyway.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from pool.supervisor.snapshot import PoolSnapshot

log = logging.getLogger(__name__)

EXTEND_EVERY_S = 2.0  # while starting: each extension covers three of these periods
RELOADS = "settings_reloaded"  # the arbiter's count() of a SIGHUP reload that took effect


class Notifier:
    """Datagrams to ``$NOTIFY_SOCKET``; a missing or broken socket never stops the pool."""

    def __init__(self, address: str) -> None:
        # an abstract socket is written with a leading @ and addressed with a NUL byte
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # not inherited
        self._sock.setblocking(False)  # a stalled reader must never hold up the arbiter loop
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier | None:
        address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
        return cls(address) if address else None

    def send(self, **fields: Any) -> bool:
        """One datagram, ``KEY=VALUE`` per line; False (logged once) if it cannot be sent."""
        data = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(data, self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"),
                            exc.strerror or exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        self._sock.close()


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None
                      ) -> float | None:
    """Seconds between ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None when systemd did
    not ask this process for them (as ``sd_watchdog_enabled``)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        watched = int(env.get("WATCHDOG_PID") or (os.getpid() if pid is None else pid))
    except ValueError:
        log.warning("WATCHDOG_USEC/WATCHDOG_PID unreadable (%r, %r): no watchdog pings",
                    env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))
        return None
    if usec <= 0 or watched != (os.getpid() if pid is None else pid):
        return None
    return usec / 2e6


def status_line(snap: PoolSnapshot) -> str:
    """What ``systemctl status`` shows on its Status: line."""
    states = snap.executors_by_state()
    busy = states["busy"] + states["reserved"]
    runs = f"{len(snap.active_runs)} run{'s' if len(snap.active_runs) != 1 else ''} in flight"
    if snap.stopping:
        return f"stopping: {runs}, no more claims"
    if snap.draining:
        return f"draining: {runs}, no more claims"
    if states["booting"]:
        return f"booting executors: {snap.size - states['booting']} of {snap.size} ready"
    if not snap.connected:
        return f"connecting to Lightning; {runs}"
    if not snap.queue_joined:
        return f"joining worker:queue; {runs}"
    return f"{busy} of {snap.size} executors busy, {runs}"


class ServiceNotifier:
    """Turns the arbiter's published snapshots (and timers) into systemd notifications.

    ``on_snapshot`` is a snapshot hook: the arbiter calls it on its own loop each time it
    publishes a changed snapshot. ``start(timers)`` arms the loop timers that send
    ``EXTEND_TIMEOUT_USEC`` while starting and ``WATCHDOG=1`` while running.
    """

    def __init__(self, notifier: Notifier, watchdog_s: float | None) -> None:
        self.notifier = notifier
        self.watchdog_s = watchdog_s
        self.ready = False
        self.reloading = False
        self.stopping = False
        self.reloads = 0
        self.status = ""
        self._timers: Any = None  # the arbiter loop's Timers, from start()

    def start(self, timers: Any) -> None:
        self._timers = timers
        self.notifier.send(STATUS="starting", EXTEND_TIMEOUT_USEC=int(3 * EXTEND_EVERY_S * 1e6))
        timers.call_later(EXTEND_EVERY_S, self.extend_start)
        if self.watchdog_s is not None:
            self.ping_watchdog()

    def extend_start(self) -> None:
        """Until READY=1: more time for the start job, as long as the loop turns."""
        if self.ready or self.stopping:
            return
        self.notifier.send(EXTEND_TIMEOUT_USEC=int(3 * EXTEND_EVERY_S * 1e6))
        self._timers.call_later(EXTEND_EVERY_S, self.extend_start)

    def ping_watchdog(self) -> None:
        self.notifier.send(WATCHDOG=1)
        self._timers.call_later(self.watchdog_s, self.ping_watchdog)

    def on_snapshot(self, snap: PoolSnapshot) -> None:
        fields: dict[str, Any] = {}
        reloads = snap.counters.get(RELOADS, 0)
        if snap.stopping and not self.stopping:
            self.stopping = True
            fields["STOPPING"] = 1
        elif reloads != self.reloads and self.ready and not self.stopping:
            self.reloading = True
            fields["RELOADING"] = 1
            fields["MONOTONIC_USEC"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.reloads = reloads
        pending = not self.ready or (self.reloading and "RELOADING" not in fields)
        if pending and not self.stopping and self.is_ready(snap):
            self.ready, self.reloading = True, False
            fields["READY"] = 1
        status = status_line(snap)
        if status != self.status:
            self.status = fields["STATUS"] = status
        if fields:
            self.notifier.send(**fields)

    def is_ready(self, snap: PoolSnapshot) -> bool:
        """Ready as ``/readyz`` has it (joined, an executor warm), and after a reload only once
        no executor is booting any more (the new generation is in)."""
        if self.reloading:
            return not snap.executors_by_state()["booting"]
        return snap.readiness()[0]
