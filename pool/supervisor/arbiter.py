"""The arbiter: one loop that owns the pool, the Lightning connection and every run.

Shape borrowed from gunicorn's arbiter (supervisors.md §2.1): the loop waits in one select()
(:class:`~pool.eventloop.EventLoop`) on the Lightning socket, every executor's socket and a
wake-up pipe; what they bring becomes small tuples on ``items``, which the loop then takes all
at once and decides on — no locks anywhere else. Signal handlers and the other threads
(control socket, HTTP, the Lightning connector, an executor's reaper) only ``post()``, which
queues and wakes the loop. Each turn ends with ``manage_executors`` (keep the pool at size),
``claim_runs`` (admission) and, if anything in it changed, a fresh published
:class:`PoolSnapshot`.

A turn costs CPU on every run's path (a trivial run takes some thirty round trips), so nothing
is done per turn that is not needed: no thread hop between a socket and the loop, executors
reaped on SIGCHLD (and every ``REAP_EVERY_S`` to be safe), the snapshot rebuilt only when
something it shows changed.

Seams for the rest of the lifecycle (signals, control socket, HTTP, metrics):

* ``submit(name, **args) -> Future``: run ``command_<name>`` on the loop from any thread;
* ``snapshot()``: the latest read-only picture of the pool;
* ``count(name, **labels)``: called exactly where each countable thing happens; observers
  append to ``count_hooks``;
* ``snapshot_hooks``: called on the loop with each snapshot it publishes (systemd's
  notifications, ``notify.py``).

Exit codes: 0 after a graceful stop, 2 for unusable settings, 3 when an executor cannot boot
(its one-line reason is printed; no respawn loop).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from types import FrameType
from typing import Any

from pool.eventloop import EventLoop
from pool.executor.handle import BOOT_FAILED, ExecutorGone
from pool.executor.protocol import (
    EXIT_BOOT_FAILURE,
    READY,
    RECYCLED,
    RUN_COMPLETE,
    SHIM_LOST,
)
from pool.executor.sandbox import describe as describe_sandbox
from pool.lightning.phoenix import PhoenixSocket, Push, Reply
from pool.lightning.queue_channel import QueueChannel
from pool.lightning.tokens import RunTokenError
from pool.lightning.workloops import Workloop
from pool.logs import LogSetupError, setup_logging
from pool.seed_repo import SeedError, seed_repo_command
from pool.settings import SETTINGS, SettingsError
from pool.supervisor.admission import Admission
from pool.supervisor.config import EXIT_SETTINGS, StartupError, SupervisorConfig, load_config
from pool.supervisor.executors import (
    BOOTING,
    BUSY,
    DEAD,
    IDLE,
    RESERVED,
    STOPPING,
    ExecutorSlot,
    spawn_slot,
)
from pool.supervisor.handover import (
    HandoverError,
    handed_over,
    receive_secrets,
    reexec_without_secrets,
)
from pool.supervisor.journal import Journal, JournaledRun, JournalError, token_expiry
from pool.supervisor.observe import serve_observers, settings_reloader
from pool.supervisor.recovery import recover_runs
from pool.supervisor.respawn import RespawnGuard
from pool.supervisor.scaling import resize
from pool.supervisor.session import DONE, REFUSED, RunSession
from pool.supervisor.session import READY as SESSION_READY
from pool.supervisor.sizing import cpu_count, cpu_warning
from pool.supervisor.snapshot import ExecutorView, PoolSnapshot
from pool.supervisor.timers import Timers
from pool.undumpable import make_undumpable

log = logging.getLogger("pool.supervisor")

MAX_SLEEP_S = 1.0
REAP_EVERY_S = 1.0  # waitpid without a SIGCHLD: a safety net, not the way deaths are seen
# Items that change nothing the snapshot shows by themselves (the run's replies and events):
# what follows from them (a dispatch, a completion) goes through count(), which marks it stale.
QUIET_ITEMS = frozenset({"run_joined", "run_fetched", "run_sent", "executor_message"})
STOP_FLUSH_S = 10.0  # after cancelling runs at the graceful deadline: time to report them
EXECUTOR_STOP_S = 10.0
# executors booting at once, at most: a pool growing by a hundred must not fork a hundred
# interpreters and Node processes in one turn (the loop would serve nothing meanwhile and the
# machine would thrash); the rest are spawned as these report ready
BOOTING_AT_ONCE = max(4, 2 * cpu_count())


class HaltServer(Exception):
    """Stop the supervisor now with ``exit_code`` and a one-line ``reason``."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


class Arbiter:
    """The supervisor's loop and everything it owns. Construct, then ``run()`` on the main
    thread (executors are spawned from it, so their ``PR_SET_PDEATHSIG`` stays armed)."""

    def __init__(self, config: SupervisorConfig,
                 reload: Callable[[str], SupervisorConfig] | None = None) -> None:
        self.config = config
        self.reload = reload  # SIGHUP: settings read again (flags, env, config file, *_FILE)
        self.loop = EventLoop()
        self.items: deque[tuple[Any, ...]] = deque()  # appended to on the loop's thread only
        self.timers = Timers()
        self.admission = Admission(config.workloops, config.backoff)
        self.size = config.size
        self.slots: dict[int, ExecutorSlot] = {}
        self.sessions: dict[str, RunSession] = {}
        self.waiting_for_executor: list[str] = []  # sessions whose reserved executor died
        self.counters: Counter[str] = Counter()
        self.runs_by_reason: Counter[str] = Counter()
        self.count_hooks: list[Callable[[str, dict[str, str]], None]] = []
        self.observe_hooks: list[Callable[[str, float], None]] = []
        self.snapshot_hooks: list[Callable[[PoolSnapshot], None]] = []  # on the loop's thread
        self.paused = False  # `poolctl drain`: no more claims, but the pool stays up
        self.live_size: int | None = None  # set by scale/TTIN/TTOU; survives SIGHUP
        self.old_generation: set[int] = set()  # slots to retire once idle (after SIGHUP)
        self.unreplaced_deaths = 0  # executors that died unasked and are not yet respawned
        self.respawn_guard = RespawnGuard()
        self.journal = Journal(config.state_dir, config.journal_identity,
                               fsync=config.state_fsync)
        self.connected = False
        self.queue_joined = False
        self.draining = False
        self.exit_code: int | None = None
        self._halt: HaltServer | None = None  # raised once the runs in progress are reported
        self._stop_deadline: float | None = None
        self._cancelled_at_deadline = False
        self._next_slot_id = 1
        self._booted = False
        self._snapshot = PoolSnapshot(size=self.size, pid=os.getpid())
        self._stale = True  # something the snapshot shows changed since it was published
        self._reap_due = False  # a SIGCHLD came: some executor may have exited
        self._next_reap_at = 0.0
        self._claim_due = 0.0  # when a backing-off workloop may claim next (inf: nothing due)
        self.socket = PhoenixSocket(config.socket_url, timeout=config.message_timeout,
                                    loop=self.loop,
                                    on_open=lambda: self.post(("socket_open",)),
                                    on_close=lambda reason: self.post(("socket_closed", reason)))
        self.queue = QueueChannel(self.socket, list(config.workloops), config.claim_timeout,
                                  on_work_available=lambda: self.post(("work_available",)),
                                  on_join=lambda reply, rejoined: self.post(
                                      ("queue_joined", reply, rejoined)))

    # -- seams for other threads ----------------------------------------------------------------
    def post(self, item: tuple[Any, ...]) -> None:
        """Queue an item for the loop: directly from the loop's own thread (its sockets'
        callbacks), through the wake-up pipe from any other thread."""
        if self.loop.in_loop_thread():
            self.items.append(item)
        else:
            self.loop.call_from_thread(self.items.append, item)

    def submit(self, name: str, **args: Any) -> Future[Any]:
        """Run ``command_<name>(**args)`` on the loop; the future holds its answer."""
        future: Future[Any] = Future()
        self.post(("command", name, args, future))
        return future

    def snapshot(self) -> PoolSnapshot:
        return self._snapshot

    def count(self, name: str, **labels: str) -> None:
        """One countable thing happened (the single place counters and metrics hook in)."""
        key = name + "".join(f"[{k}={v}]" for k, v in sorted(labels.items()))
        self.counters[key] += 1
        self._stale = True
        for hook in self.count_hooks:
            try:
                hook(name, labels)
            except Exception:
                log.exception("count hook %r failed", hook)

    def observe(self, name: str, seconds: float) -> None:
        """A duration was measured (claim→dispatch, claim→complete): for the histograms."""
        for hook in self.observe_hooks:
            try:
                hook(name, seconds)
            except Exception:
                log.exception("observe hook %r failed", hook)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> int:
        """Boot the pool, connect, serve until stopped; returns the exit code."""
        self.loop.bind()
        self.install_signals()
        try:
            self.open_journal()
            self.manage_executors()  # the first executors; the rest as these boot
            while self.exit_code is None:
                changed = self.handle_items(self.wait_for_items())
                now = time.monotonic()
                if self.timers.fire_due(now):
                    self._stale = True
                if self._reap_due or now >= self._next_reap_at:
                    self.reap_executors(now)
                    self.check_boot_deadlines(now)
                    self.manage_executors()  # also: a respawn held back by the guard
                elif changed or self._stale:  # a run's replies and events alone never
                    self.manage_executors()      # change what the pool should look like
                if changed or self._stale or now >= self._claim_due:  # likewise
                    self.claim_runs(now)
                self.check_stop(now)
                if self._stale:
                    self.publish_snapshot()
        except HaltServer as halt:
            self.exit_code, reason = halt.exit_code, halt.reason
        else:
            reason = None
        finally:
            self.shutdown()
        if reason:  # last, after the executors' own output: the one line to read
            print(f"poolctl: {reason}", file=sys.stderr, flush=True)
        return self.exit_code

    def open_journal(self) -> None:
        """Take this pool's journal and recover what a killed predecessor left (recovery.py),
        before any executor boots or any claim goes out."""
        try:
            replay = self.journal.open()
        except JournalError as exc:
            raise HaltServer(str(exc), EXIT_SETTINGS) from None
        recover_runs(self, replay)

    def wait_for_items(self) -> list[tuple[Any, ...]]:
        """Everything queued, after reading what the sockets have (sleeping until something
        arrives or the next thing is due, unless items are already waiting)."""
        socket_due = self.socket.next_deadline()
        if self.items:
            wait = 0.0
        else:
            due = [d for d in (self.timers.next_due(), self._claim_due, self._next_reap_at,
                               socket_due) if d is not None]
            wait = max(0.0, min([MAX_SLEEP_S] + [d - time.monotonic() for d in due]))
        self.loop.run_once(wait)
        self.socket.fire_timers(time.monotonic())  # returns at once unless something is due
        items = list(self.items)
        self.items.clear()
        return items

    def handle_items(self, items: list[tuple[Any, ...]]) -> bool:
        """Act on each item; True if any was more than a run's reply or event."""
        changed = False
        for item in items:
            if item[0] not in QUIET_ITEMS:
                self._stale = changed = True
            handler = getattr(self, f"on_{item[0]}")
            handler(*item[1:])
        return changed

    def publish_snapshot(self) -> None:
        self._stale = False
        views = tuple(
            ExecutorView(pid=s.pid, state=s.shown[0], run_id=s.shown[1], runs_done=s.runs_done,
                         started_at=s.started_at, shim_pid=s.ready.get("shim_pid"), id=s.id)
            for s in self.slots.values() if s.state != DEAD)
        self._snapshot = PoolSnapshot(
            executors=views, claims_in_flight=self.admission.claims_in_flight,
            runs_by_reason=dict(self.runs_by_reason), queue_joined=self.queue_joined,
            draining=self.draining or self.paused, size=self.size, pid=os.getpid(), connected=self.connected,
            active_runs=tuple(self.sessions), counters=dict(self.counters),
            stopping=self.draining, sandbox=self.config.sandbox)
        for hook in self.snapshot_hooks:  # e.g. systemd's notifications (notify.py)
            try:
                hook(self._snapshot)
            except Exception:
                log.exception("snapshot hook %r failed", hook)

    # -- signals and commands -------------------------------------------------------------------
    def install_signals(self) -> None:
        def enqueue(signum: int, _frame: FrameType | None) -> None:
            # the wake-up pipe even on the loop's thread: it may be asleep in select()
            self.loop.call_from_thread(self.items.append, ("signal", signum))  # NO LOGGING

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGQUIT,
                       signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, enqueue)

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self._reap_due = True  # reaped at the end of this turn
            return
        name = signal.Signals(signum).name
        if signum == signal.SIGQUIT:
            log.warning("SIGQUIT: stopping now, runs in progress are killed")
            self.stop_now()
        elif signum == signal.SIGHUP:
            self.reload_pool()
        elif signum in (signal.SIGTTIN, signal.SIGTTOU):
            step = 1 if signum == signal.SIGTTIN else -1
            try:
                log.info("%s: %s", name, self.command_scale(self.size + step))
            except ValueError as exc:
                log.warning("%s ignored: %s", name, exc)
        elif self.draining:
            log.warning("%s again: stopping now, runs in progress are killed", name)
            self.stop_now()
        else:
            log.info("%s: stopping gracefully (no more claims; %d runs to finish, up to %gs)",
                     name, len(self.sessions), self.config.graceful_timeout)
            self.begin_drain()

    def on_command(self, name: str, args: dict[str, Any], future: Future[Any]) -> None:
        handler = getattr(self, f"command_{name}", None)
        if handler is None:
            future.set_exception(ValueError(f"unknown command {name!r}"))
            return
        try:
            result = handler(**args)
        except Exception as exc:
            future.set_exception(exc)
            return
        if self._stale:  # whoever asked sees the change in /readyz and status at once
            self.publish_snapshot()
        future.set_result(result)

    def command_status(self) -> PoolSnapshot:
        self.publish_snapshot()
        return self._snapshot

    def command_drain(self) -> str:
        """Stop claiming for good, keep the pool up (a pre-stop hook, then SIGTERM)."""
        self.paused = True
        return f"draining: no more claims; {len(self.sessions)} run(s) in progress finish"

    def command_scale(self, size: int) -> str:
        """Resize live (the last workloop takes the change); kept across SIGHUP."""
        if self.draining:
            raise ValueError("the pool is stopping; it cannot be resized")
        limit = self.config.max_size
        if size > limit.size:
            raise ValueError(f"cannot scale to {size}: over the pool's maximum of {limit.size} "
                             f"({limit.why}); the pool is unchanged")
        old = self.size
        self.apply_workloops(resize(self.config.workloops, size))
        self.live_size = size
        warning = cpu_warning(size)
        if warning is not None:
            log.warning("%s", warning)
        return f"size {size} (was {old})"

    def apply_workloops(self, workloops: tuple[Workloop, ...]) -> None:
        """New slot counts for the same workloops; manage_executors adds or retires executors."""
        self.config = replace(self.config, workloops=workloops)
        for state, loop in zip(self.admission.loops, workloops, strict=True):
            state.loop = loop
        self.size = self.config.size

    def reload_pool(self) -> None:
        """SIGHUP: read the settings again, start a new generation of executors, retire the old
        ones as they become idle (new ones first, so the pool never runs short); reconnect
        with the new worker secret if it changed (``rotate_secret``)."""
        if self.reload is None or self.draining:
            log.warning("SIGHUP ignored: %s", "stopping" if self.draining else "no settings "
                        "to reload")
            return
        try:
            config = self.reload(self.config.worker_id)
        except StartupError as exc:
            log.error("SIGHUP: settings not reloaded, keeping the running ones: %s", exc)
            return
        if [w.queues for w in config.workloops] != [w.queues for w in self.config.workloops]:
            log.warning("SIGHUP: the workloops' queues changed; that needs a restart, so they "
                        "keep their running shape")
            config = replace(config, workloops=self.config.workloops)
        workloops = config.workloops
        if self.live_size is not None:
            try:
                workloops = resize(workloops, self.live_size)
            except ValueError as exc:
                log.warning("SIGHUP: the size set live no longer fits (%s); using %d", exc,
                            sum(w.capacity for w in workloops))
                self.live_size = None
        rotated = config.secret_digest != self.config.secret_digest
        if not rotated:  # the same token as before: a new iat alone is no reason to reconnect
            config = replace(config, socket_url=self.config.socket_url)
        keys_before = self.config.verifier.key_count
        self.config = config
        self.apply_workloops(workloops)
        if config.verifier.key_count != keys_before:
            log.info("SIGHUP: run tokens are now verified with %d public key(s)",
                     config.verifier.key_count)
        if rotated:
            self.rotate_secret()
        self.old_generation |= {s.id for s in self.slots.values() if s.state != DEAD}
        self.count("settings_reloaded")
        log.info("SIGHUP: settings reloaded; replacing %d executors (size %d)",
                 len(self.old_generation), self.size)

    def rotate_secret(self) -> None:
        """The worker secret changed: reconnect with a token signed by the new one. The runs
        in progress lose nothing: their channels rejoin and unanswered events are resent, as
        after any dropped connection."""
        self.count("secret_rotated")
        if not self._booted:  # not connected yet: the first connect uses the new url
            self.socket.url = self.config.socket_url
            log.info("SIGHUP: the worker secret changed")
            return
        log.info("SIGHUP: the worker secret changed; reconnecting to Lightning with it "
                 "(%d runs in progress carry on)", len(self.sessions))
        self.socket.reconnect(self.config.socket_url, "reconnecting with the new worker secret")

    def command_stop(self, graceful: bool = True) -> str:
        if graceful:
            self.begin_drain()
            return "stopping"
        self.stop_now()
        return "stopping now"

    def begin_drain(self) -> None:
        """Stop claiming; runs claimed so far finish; then the loop exits 0 (``check_stop``)."""
        if not self.draining:
            self.draining, self._stale = True, True  # also from a boot deadline, outside items
            self._stop_deadline = time.monotonic() + self.config.graceful_timeout

    def stop_now(self) -> None:
        """Cancel every run (each is still reported, as ``kill``) and stop soon after."""
        self.draining = True
        self.cancel_runs()
        self._cancelled_at_deadline = True
        self._stop_deadline = time.monotonic() + STOP_FLUSH_S

    def check_stop(self, now: float) -> None:
        if not self.draining:
            return
        if not self.sessions and not self.admission.claims_in_flight:
            log.info("every run is reported; stopping")
            self.stopped()
            return
        if self._stop_deadline is not None and now >= self._stop_deadline:
            if not self._cancelled_at_deadline:
                log.warning("graceful timeout: cancelling %d runs", len(self.sessions))
                self.cancel_runs()
                self._cancelled_at_deadline = True
                self._stop_deadline = now + STOP_FLUSH_S
            else:
                log.error("stopping with %d runs not fully reported", len(self.sessions))
                self.stopped()

    def stopped(self) -> None:
        """The drain is over: exit 0, or with the halt that started it (a boot failure)."""
        if self._halt is not None:
            raise self._halt
        self.exit_code = 0

    def cancel_runs(self) -> None:
        for slot in self.slots.values():
            if slot.state == BUSY and slot.run_id:
                # if it is gone, its reader reports the death, and the run as crashed
                with contextlib.suppress(ExecutorGone):
                    slot.handle.cancel(slot.run_id)

    # -- executors ---------------------------------------------------------------------------------
    def spawn_executor(self) -> ExecutorSlot | None:
        picked = self.slot_init()
        if picked is None:
            log.error("no executor started: --sandbox-uids %s has no two free uids left "
                      "(two per executor)", self.config.sandbox_uids)
            return None
        init, uid_index = picked
        slot_id, self._next_slot_id = self._next_slot_id, self._next_slot_id + 1
        slot = spawn_slot(slot_id, init, self.config.boot_timeout, self.loop, self.post)
        slot.uid_index = uid_index
        self.slots[slot_id] = slot
        self._stale = True
        log.info("executor %s spawned (pid %s)", slot_id, slot.pid,
                 extra={"executor_pid": slot.pid})
        return slot

    def slot_init(self) -> tuple[dict[str, Any], int | None] | None:
        """The ``init`` for a new executor: in the uid sandbox, with two uids no live executor
        holds (the lowest free pair, so a respawn reuses its predecessor's, never a live one's)."""
        init = self.config.executor_init
        if self.config.sandbox_uids is None:
            return init, None
        held = {s.uid_index for s in self.slots.values() if s.state != DEAD}
        index = next(i for i in range(len(self.slots) + 1) if i not in held)
        uids = self.config.sandbox_uids
        if 2 * index + 1 >= len(uids):
            return None
        pair = [uids[2 * index], uids[2 * index + 1]]
        return dict(init, sandbox=dict(init["sandbox"], uids=pair)), index

    def manage_executors(self) -> None:
        """Keep ``size`` executors of the current generation alive, unless stopping: respawn
        the dead (within the restart-storm guard), retire the surplus and, once the new
        generation has booted, the old one, each as soon as it is idle."""
        if self.draining:
            return
        current = [s for s in self.slots.values()
                   if s.state not in (DEAD, STOPPING) and s.id not in self.old_generation]
        # a death the pool no longer needs to replace (it shrank since) is not a respawn
        self.unreplaced_deaths = min(self.unreplaced_deaths, max(0, self.size - len(current)))
        booting = sum(1 for s in self.slots.values() if s.state == BOOTING)
        for _ in range(min(self.size - len(current), BOOTING_AT_ONCE - booting)):
            if self.unreplaced_deaths and not self.may_respawn():
                break
            self.spawn_executor()
        surplus = len(current) - self.size
        for slot in sorted(current, key=lambda s: s.state != BOOTING):  # booting ones first
            if surplus <= 0:
                break
            if slot.state in (BOOTING, IDLE):
                self.retire_executor(slot, "the pool is smaller now")
                surplus -= 1
        if self.old_generation and all(s.state != BOOTING for s in current):
            for slot_id in list(self.old_generation):
                slot = self.slots.get(slot_id)
                if slot is None or slot.state == STOPPING:
                    self.old_generation.discard(slot_id)
                elif slot.state in (BOOTING, IDLE):
                    self.retire_executor(slot, "replaced after SIGHUP")
                    self.old_generation.discard(slot_id)

    def may_respawn(self) -> bool:
        """Take one respawn from the restart-storm guard (respawn.py), if it allows one now."""
        now = time.monotonic()
        if self.respawn_guard.wait_s(now) > 0:
            return False
        self.unreplaced_deaths -= 1
        if self.respawn_guard.record(now):
            log.warning("executors keep dying (%d respawns within %gs): next respawn in %gs",
                        self.respawn_guard.limit, self.respawn_guard.window_s,
                        self.respawn_guard.wait_s(now))
            self.count("respawn_backoff")
        self.count("executor_respawned")
        return True

    def retire_executor(self, slot: ExecutorSlot, why: str) -> None:
        """Ask an executor with no run to exit; its exit is then expected, not respawned."""
        log.info("executor %s (pid %s) retired: %s", slot.id, slot.pid, why,
                 extra={"executor_pid": slot.pid})
        slot.state = STOPPING
        self._stale = True
        with contextlib.suppress(ExecutorGone):  # already exiting: reported as STOPPING
            slot.handle.stop(graceful=True)

    def reap_executors(self, now: float) -> None:
        """Notice executors that exited even when their socket has not closed (a shim that
        outlived its executor may still hold it): waitpid is the truth, as in gunicorn."""
        self._reap_due, self._next_reap_at = False, now + REAP_EVERY_S
        for slot in list(self.slots.values()):
            code = slot.handle.proc.poll()
            if code is not None and slot.state != DEAD:
                why = (f"executor killed by signal {-code}" if code < 0
                       else f"executor exited with code {code}")
                self.on_executor_gone(slot.id, code, why)

    def check_boot_deadlines(self, now: float) -> None:
        for slot in list(self.slots.values()):
            if slot.state == BOOTING and now >= slot.boot_deadline and not slot.boot_failure:
                slot.boot_failure = f"no ready within {self.config.boot_timeout:g}s"
                slot.handle.kill()
                self.boot_failed(f"executor boot failed: {slot.boot_failure}")

    def boot_failed(self, reason: str) -> None:
        """An executor cannot boot: no respawn loop, the supervisor exits 3 with ``reason``.
        Runs other executors are running must not be lost to it: claiming stops, they finish
        and are reported (within the graceful timeout, as on SIGTERM), then the exit."""
        if not self.sessions and not self.admission.claims_in_flight:
            raise HaltServer(reason, EXIT_BOOT_FAILURE)
        if self._halt is None:
            log.error("%s; no more claims: %d runs in progress finish (up to %gs), then exit "
                      "%d", reason, len(self.sessions), self.config.graceful_timeout,
                      EXIT_BOOT_FAILURE)
            self._halt = HaltServer(reason, EXIT_BOOT_FAILURE)
        self.begin_drain()

    def on_executor_message(self, slot_id: int, message: dict[str, Any]) -> None:
        slot = self.slots.get(slot_id)
        if slot is None:
            return
        kind = message.get("type")
        if kind == READY:
            self.executor_ready(slot, message)
        elif kind == RECYCLED:
            log.info("executor %s replaced its shim (%s): %s → %s", slot.id,
                     message.get("cause"), message.get("old_shim_pid"),
                     message.get("new_shim_pid"))
            self.count("shim_recycled", cause=str(message.get("cause")))
        elif kind == SHIM_LOST:
            self.executor_unready(slot, message)
        elif kind == BOOT_FAILED:
            slot.boot_failure = str(message.get("reason") or "boot failed")
        else:
            if kind == RUN_COMPLETE and message.get("run_id") == slot.run_id:
                slot.run_over = self._stale = True  # its next ready frees it
            session = self.sessions.get(slot.run_id or "")
            if session is None or message.get("run_id") != slot.run_id:
                log.warning("executor %s: %s for run %s, which it is not running; ignored",
                            slot.id, kind, message.get("run_id"))
                return
            session.on_executor_message(message)
            self.advance(session)

    def executor_ready(self, slot: ExecutorSlot, message: dict[str, Any]) -> None:
        first = slot.state == BOOTING
        self._stale = True
        slot.ready = message
        if slot.state == RESERVED:
            return  # promised to a run already; nothing changes
        if slot.state == BUSY and not slot.run_over:
            return  # sent before it read the run (a shim replaced meanwhile): not free yet
        if slot.state == BUSY:
            slot.runs_done += 1
        slot.run_id, slot.run_dispatched, slot.run_over = None, False, False
        if slot.state == STOPPING:
            return
        slot.state = IDLE
        if first:
            log.info("executor %s ready (pid %s, shim %s, node %s, runtime %s, %s)", slot.id,
                     slot.pid, message.get("shim_pid"), message.get("node"),
                     message.get("runtime"), message.get("isolation"),
                     extra={"executor_pid": slot.pid})
        self.give_to_waiting(slot)
        if not self._booted and len(self.slots) >= self.size and \
                all(s.state != BOOTING for s in self.slots.values()):
            self._booted = True
            log.info("%d executors ready; connecting to Lightning at %s", self.size,
                     self.config.lightning_url)
            self.socket.connect()
            self.queue.join()

    def executor_unready(self, slot: ExecutorSlot, message: dict[str, Any]) -> None:
        """Its idle shim died: booting again (no run is given to it) until its next ready."""
        log.warning("executor %s: its idle shim (pid %s) died; it is replacing it", slot.id,
                    message.get("shim_pid"), extra={"executor_pid": slot.pid})
        self.count("shim_lost")
        if slot.state == IDLE:
            slot.state = BOOTING
            slot.boot_deadline = time.monotonic() + self.config.boot_timeout

    def give_to_waiting(self, slot: ExecutorSlot) -> None:
        """A run whose reserved executor died takes the next one that is ready."""
        while self.waiting_for_executor and slot.state == IDLE:
            session = self.sessions.get(self.waiting_for_executor.pop(0))
            if session is not None and session.state != DONE:
                self.reserve(slot, session)
                self.advance(session)

    def on_executor_gone(self, slot_id: int, returncode: int | None, reason: str) -> None:
        slot = self.slots.get(slot_id)
        if slot is None or slot.state == DEAD:
            return
        was, slot.state = slot.state, DEAD
        self._stale = True  # also when reaped, outside any item
        self.loop.remove_reader(slot.fd)
        slot.handle.close(timeout=1)  # also kills what is left of its process group
        del self.slots[slot_id]
        if returncode == EXIT_BOOT_FAILURE or slot.boot_failure:
            self.boot_failed(f"executor boot failed: {slot.boot_failure or reason}")
            return
        if was == STOPPING:
            return
        log.error("executor %s (pid %s) died: %s%s", slot.id, slot.pid, reason,
                  " (perhaps out of memory?)" if returncode == -signal.SIGKILL else "",
                  extra={"executor_pid": slot.pid, "run_id": slot.run_id})
        self.count("executor_died", state=was)
        if slot_id in self.old_generation:
            self.old_generation.discard(slot_id)
        else:
            self.unreplaced_deaths += 1
        session = self.sessions.get(slot.run_id or "")
        if session is None:
            return
        if slot.run_dispatched:
            session.executor_died(reason)
            self.advance(session)
        else:  # reserved, not yet dispatched: the run waits for the next ready executor
            session.slot_id = None
            idle = self.idle_slot()
            if idle is not None:
                self.reserve(idle, session)
            else:
                self.waiting_for_executor.append(session.run_id)

    def idle_slot(self) -> ExecutorSlot | None:
        return next((s for s in self.slots.values() if s.state == IDLE), None)

    def reserve(self, slot: ExecutorSlot, session: RunSession) -> None:
        slot.state, slot.run_id = RESERVED, session.run_id
        session.slot_id = slot.id

    def release(self, session: RunSession) -> None:
        """The run will not be dispatched: its reserved executor is free again."""
        slot = self.slots.get(session.slot_id) if session.slot_id is not None else None
        if slot is not None and slot.state == RESERVED and slot.run_id == session.run_id:
            slot.state, slot.run_id = IDLE, None
            self.give_to_waiting(slot)
        session.slot_id = None
        if session.run_id in self.waiting_for_executor:
            self.waiting_for_executor.remove(session.run_id)

    # -- Lightning connection --------------------------------------------------------------------
    def on_socket_open(self) -> None:
        if self.counters["socket_opened"]:
            self.count("reconnected")
        self.counters["socket_opened"] += 1
        self.connected = True

    def on_socket_closed(self, reason: str) -> None:
        self.connected = self.queue_joined = False
        for session in self.sessions.values():
            session.on_socket_closed()

    def on_queue_joined(self, reply: Reply, rejoined: bool) -> None:
        if not reply.ok:
            log.error("Lightning refused to join worker:queue: %s", reply.response)
            self.queue_joined = False
            return
        log.info("%s worker:queue (size %d, workloops %s)", "rejoined" if rejoined else "joined",
                 self.size, " ".join(f"{w.name}:{w.capacity}" for w in self.config.workloops))
        self.queue_joined = True
        self.admission.wake_all(time.monotonic())

    def on_work_available(self) -> None:
        self.admission.wake_all(time.monotonic(), reset=False)

    # -- admission ----------------------------------------------------------------------------------
    def may_claim(self) -> bool:
        return not (self.draining or self.paused or not self.queue_joined)

    def free_executors(self) -> int:
        """Ready executors no run has: admission's upper bound on a claim."""
        idle = sum(1 for s in self.slots.values() if s.state == IDLE)
        return idle - len(self.waiting_for_executor)

    def claim_runs(self, now: float) -> None:
        """Claim what the pool can start right now (admission.py has the rules), and note when
        a claim may next be due by time alone (a backoff ending): until then only a change —
        an executor ready, a run finished, a reply — can make one due."""
        self._claim_due = float("inf")
        if not self.may_claim():
            return
        free = self.free_executors()
        for index, demand, follow_up in self.admission.plan_claims(free, now):
            loop = self.config.workloops[index]
            self.queue.claim(demand, self.config.worker_name, loop.queues,
                             callback=lambda push, i=index, d=demand: self.post(
                                 ("claim_replied", i, d, push)))
            self.count("claim_sent", workloop=loop.name, demand=str(demand))
            if follow_up:
                self.count("claim_after_runs", workloop=loop.name)
        due = self.admission.next_claim_due(free)  # claims reserve nothing until answered
        self._claim_due = float("inf") if due is None else due

    def on_claim_replied(self, index: int, demand: int, push: Push) -> None:
        now = time.monotonic()
        try:
            runs = push.result(0)
        except Exception as exc:  # LightningError: error, timeout or unreadable reply
            if not self.draining:
                log.warning("claim failed: %s", exc)
            self.admission.claim_answered(index, 0, now)
            return
        if len(runs) > demand:
            log.error("Lightning sent %d runs for a claim of %d; the extra runs are not joined "
                      "and will be re-queued", len(runs), demand)
            runs = runs[:demand]
        self.admission.claim_answered(index, len(runs), now)
        if runs:
            self.count("claim_returned_runs")
        for claimed in runs:
            self.count("run_claimed")
            self.join_run(index, claimed.id, claimed.token)

    def join_run(self, workloop: int, run_id: str, token: str) -> None:
        """Verify the run token, reserve an executor, join ``run:<id>`` at once."""
        try:
            claims = self.config.verifier.verify(token)
        except RunTokenError as exc:
            log.error("run %s refused: %s; it is not joined and Lightning will re-queue it",
                      run_id, exc)
            self.count("run_token_refused")
            self.admission.run_finished(workloop, time.monotonic())
            return
        exp = token_expiry(token, claims)
        expires = None if exp is None else time.monotonic() + (exp - time.time())
        self.journal.claimed(run_id, token, exp, workloop)
        session = RunSession(run_id, token, workloop, self.socket, self.config, self.timers,
                             self.post, self.count, expires)
        session.journal = self.journal
        self.sessions[run_id] = session
        slot = self.idle_slot()
        if slot is not None:
            self.reserve(slot, session)
        else:  # its executor went back to booting since the claim (its idle shim died)
            log.warning("run %s: no idle executor for a claimed run; it waits for the next "
                        "one ready", run_id)
            self.waiting_for_executor.append(run_id)
        self.timers.call_at(session.deadline, self.check_run_deadline, run_id)
        session.join()

    def rejoin_run(self, run: JournaledRun) -> None:
        """A run the previous incarnation left joined (recovery.py): rejoin it to execute it
        if it was never dispatched (it takes an executor and its workloop's slot, like a
        claim), else only to report it (it takes neither: a report must not hold up new
        work)."""
        workloop = min(max(run.workloop, 0), len(self.admission.loops) - 1)
        expires = None if run.exp is None else time.monotonic() + (run.exp - time.time())
        session = RunSession(run.id, run.token, workloop, self.socket, self.config,
                             self.timers, self.post, self.count, expires)
        session.journal = self.journal
        session.recovered, session.report_only = run, run.dispatched
        # an expired token still gets its rejoin tried (Lightning's clock decides), and the
        # refusal, not the deadline, says what happened
        session.deadline = max(session.deadline,
                               time.monotonic() + 2 * self.config.message_timeout)
        self.sessions[run.id] = session
        if not session.report_only:  # like a claimed run: an executor and a workloop slot
            self.admission.loops[workloop].active += 1
            slot = self.idle_slot()
            if slot is not None:
                self.reserve(slot, session)
            else:
                self.waiting_for_executor.append(run.id)
        self.timers.call_at(session.deadline, self.check_run_deadline, run.id)
        session.join()

    # -- runs -----------------------------------------------------------------------------------
    def on_run_joined(self, run_id: str, reply: Reply, rejoined: bool) -> None:
        session = self.sessions.get(run_id)
        if session is not None:
            session.on_joined(reply)
            self.advance(session)

    def on_run_fetched(self, run_id: str, what: str, push: Push) -> None:
        session = self.sessions.get(run_id)
        if session is not None:
            session.on_fetched(what, push)
            self.advance(session)

    def on_run_sent(self, run_id: str, tag: int, push: Push) -> None:
        session = self.sessions.get(run_id)
        if session is not None:
            session.on_sent(tag, push)
            self.advance(session)

    def on_run_undeliverable(self, run_id: str) -> None:
        """A run's event cannot reach Lightning, so the run is ended (session.py): stop it."""
        session = self.sessions.get(run_id)
        slot = self.slots.get(session.slot_id) if session and session.slot_id else None
        if slot is not None and slot.state == BUSY and slot.run_id == run_id:
            with contextlib.suppress(ExecutorGone):  # gone: its reader reports the death
                slot.handle.cancel(run_id)

    def advance(self, session: RunSession) -> None:
        """Act on a session's new state: dispatch it, drop it, or complete it."""
        if session.state == SESSION_READY and session.slot_id is not None:
            self.dispatch_run(session)
        elif session.state == REFUSED:
            if session.recovered is None:  # a refused recovery is counted by recovery.py
                self.count("run_join_refused")
            self.release(session)
            session.leave()
            self.forget_run(session)
        elif session.state == DONE:
            if session.report_only:
                self.count("run_recovered", outcome="reported")
            self.complete_run(session)

    def dispatch_run(self, session: RunSession) -> None:
        slot = self.slots[session.slot_id]  # type: ignore[index]
        converted = session.converted
        assert converted is not None
        slot.state, slot.run_dispatched, slot.run_over = BUSY, True, False
        session.dispatched(slot.id)
        try:
            slot.handle.run(session.run_id, converted.plan, session.input, converted.limits,
                            converted.options)
        except ExecutorGone as gone:
            session.executor_died(gone.reason)  # its socket's EOF reports the death too
        session.input = None
        self.count("run_dispatched")
        self.observe("claim_to_dispatch", time.monotonic() - session.claimed_at)
        self.advance(session)

    def complete_run(self, session: RunSession) -> None:
        """``run:complete`` is answered (or given up): leave, free the workloop's slot."""
        reason = session.reason or "lost"
        slot = self.slots.get(session.slot_id) if session.slot_id is not None else None
        log.info("run %s complete: %s", session.run_id, reason,
                 extra={"run_id": session.run_id, "executor_pid": slot.pid if slot else None})
        self.runs_by_reason[reason] += 1
        self.count("run_completed", reason=reason)
        self.observe("claim_to_complete", time.monotonic() - session.claimed_at)
        self.release(session)
        session.leave()
        self.forget_run(session)

    def forget_run(self, session: RunSession) -> None:
        self.sessions.pop(session.run_id, None)
        self.journal.done(session.run_id)
        if not session.report_only:  # a recovery report holds no workloop slot
            self.admission.run_finished(session.workloop, time.monotonic())

    def check_run_deadline(self, run_id: str) -> None:
        session = self.sessions.get(run_id)
        if session is None:
            return
        if not session.stuck:  # still moving: the run timeout bounds it, check again later
            self.timers.call_later(min(5.0, self.config.message_timeout), self.check_run_deadline,
                                  run_id)
            return
        lost = session.give_up()
        log.error("run %s: gave up reporting it (%d events undelivered): its token expired "
                  "while Lightning was unreachable or not answering; it cannot be reported any more",
                  run_id, lost)
        self.count("run_lost")
        slot = self.slots.get(session.slot_id) if session.slot_id is not None else None
        if slot is not None and slot.state == BUSY:
            with contextlib.suppress(ExecutorGone):
                slot.handle.cancel(run_id)
        session.reason = session.reason or "lost"
        self.complete_run(session)

    # -- the end ----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every executor and close the connection (also after a halt). All are told at
        once and share one deadline; one still booting has no run and is killed at once (it
        would read ``stop`` only once booted)."""
        deadline = time.monotonic() + (EXECUTOR_STOP_S if self.exit_code == 0 else 1.0)
        slots = [s for s in self.slots.values() if s.state != DEAD]
        for slot in slots:
            self.loop.remove_reader(slot.fd)
            if slot.state == BOOTING:
                slot.handle.kill()
            else:
                with contextlib.suppress(ExecutorGone):
                    slot.handle.stop(graceful=False)
            slot.state = STOPPING
        for slot in slots:
            slot.handle.close(timeout=max(0.0, deadline - time.monotonic()))
        self.slots.clear()
        if self.queue_joined:
            leave, until = self.queue.leave(), time.monotonic() + 2.0
            while not leave.done and time.monotonic() < until:  # the loop reads the reply
                self.loop.run_once(min(0.1, max(0.0, until - time.monotonic())))
                self.socket.fire_timers(time.monotonic())
        self.socket.disconnect()
        self.journal.close()
        self.publish_snapshot()


def start_command(settings: Any) -> int:
    """``poolctl start``: check the settings, log where each came from, run the arbiter."""
    try:
        # the secrets out of /proc/<pid>/environ and cmdline, and this process's memory out of
        # reach of its uid's other processes (a job that escaped its vm), before anything starts
        reexecuted = handed_over()
        if reexecuted:
            settings = receive_secrets(settings)
        else:
            reexec_without_secrets(settings)
        make_undumpable()
        # before anything reads or installs into the repo (collections, executors)
        seeded, seed_warnings = seed_repo_command(settings)
        config = load_config(settings)
        setup_logging(settings.log_level, settings.log_format, settings.sentry_dsn,
                      settings.sentry_env)
    except (StartupError, LogSetupError, HandoverError, SettingsError, SeedError,
            OSError) as exc:
        print(f"poolctl start: {exc}", file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", EXIT_SETTINGS)
    for warning in settings.warnings:
        log.warning("%s", warning)
    if reexecuted:
        gone = [f"{name} in the environment" for name in sorted(settings.handed_env)] + [
            f"{row.flag} on the command line" for row in SETTINGS
            if row.secret and settings.values.get(row.name) and settings.source(row.name) == "flag"]
        log.info("re-executed without %s (handed over a pipe); not dumpable", ", ".join(gone))
    # one line of what the operator set; every setting and its source at debug level
    log.info("settings not at their defaults: %s", ", ".join(settings.describe(set_only=True))
             or "none")
    for line in settings.describe():
        log.debug("setting %s", line)
    if seeded:
        log.info("%s", seeded)
    for line in seed_warnings:
        log.warning("%s", line)
    if config.sandbox_warning:
        log.warning("%s", config.sandbox_warning)
    log.info("sandbox %s", describe_sandbox(config.sandbox))
    arbiter = Arbiter(config, reload=settings_reloader(settings))
    try:
        with serve_observers(arbiter, settings):
            return arbiter.run()
    except StartupError as exc:
        print(f"poolctl start: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
