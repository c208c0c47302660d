"""What ``poolctl start`` runs around the arbiter: the control socket, HTTP, metrics, reload,
and systemd's notifications when started by it.

Both servers start before any executor is spawned, so a second pool on the same port fails at
once with one line (the control socket or the HTTP port is taken) instead of booting a pool
that cannot be reached. They only read the arbiter's snapshot and submit commands to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from pool.settings import SettingsError, load_settings
from pool.supervisor.config import StartupError, SupervisorConfig, load_config
from pool.supervisor.control import ControlError, ControlServer, control_socket_path
from pool.supervisor.http import HealthServer, HttpError
from pool.supervisor.metrics import PoolMetrics
from pool.supervisor.notify import Notifier, ServiceNotifier, watchdog_interval

log = logging.getLogger("pool.supervisor")


@contextlib.contextmanager
def serve_observers(arbiter: Any, settings: Any) -> Iterator[PoolMetrics]:
    """Metrics hooked into the arbiter's seams, HTTP and the control socket, while inside.

    Raises StartupError (one line, exit 2) when the socket or the port is taken.
    """
    metrics = PoolMetrics(arbiter.snapshot)
    arbiter.count_hooks.append(metrics.count)
    arbiter.observe_hooks.append(metrics.observe)
    control = ControlServer(control_socket_path(settings), arbiter)
    try:
        control.start()
        http = HealthServer(settings.http_host, settings.port, arbiter.snapshot, metrics)
    except (ControlError, HttpError) as exc:
        control.close()
        raise StartupError(str(exc)) from None
    http.start()
    notifier = Notifier.from_env()
    if notifier is not None:  # under systemd's Type=notify
        systemd = ServiceNotifier(notifier, watchdog_interval())
        arbiter.snapshot_hooks.append(systemd.on_snapshot)
        systemd.start(arbiter.timers)  # the loop's timers: they fire once run() turns
    try:
        yield metrics
    finally:
        http.close()
        control.close()
        if notifier is not None:
            notifier.close()


def settings_reloader(settings: Any) -> Callable[[str], SupervisorConfig]:
    """SIGHUP's reload: the same flags, the environment (with the secrets handed over at the
    re-exec, pool/supervisor/handover.py), the config file and the ``*_FILE`` files read
    again — rotating a secret is writing its file and sending SIGHUP."""
    flags = {name: value for name, value in settings.values.items()
             if settings.source(name) == "flag"}

    def reload(worker_id: str) -> SupervisorConfig:
        try:
            fresh = load_settings(flags, env={**os.environ, **settings.handed_env},
                                  config_path=settings.config_path, command="start")
        except SettingsError as exc:
            raise StartupError(str(exc)) from None
        for warning in fresh.warnings:  # e.g. a secret file that became group-readable
            log.warning("SIGHUP: %s", warning)
        return load_config(fresh, worker_id)

    return reload
