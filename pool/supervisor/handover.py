"""The supervisor takes its secrets out of its environment and command line by re-executing
itself in place, the secrets handed over a pipe.

``/proc/<pid>/environ`` keeps what a process was started with for its whole life (changing
``os.environ`` does not change it), and ``/proc/<pid>/cmdline`` is readable by every user. So a
secret given as ``WORKER_SECRET`` (or ``--secret``) stays readable there, by any process of the
pool's uid — a job that escaped the ``vm`` included — for as long as the pool runs. Before it
starts anything, ``poolctl start`` therefore:

1. writes the secret settings that came from the environment or a flag into a pipe (JSON);
2. ``execve``\\ s the same interpreter with the same arguments, minus those flags, and the same
   environment, minus those variables, plus ``POOLCTL_HANDOVER_FD`` naming the pipe's read end
   (inherited: the only fd that is). The pid stays the same, so a service manager or a
   container runtime sees no change;
3. after the exec, turns dumpable off (``pool.undumpable``), reads the pipe, closes it, and
   resolves the settings again with the handed-over values in place of the missing ones — the
   sources read as before (``env:WORKER_SECRET``), and SIGHUP's reload sees them the same way.

A secret read from a ``*_FILE`` is never in the environment and needs none of this. Before the
exec (a fraction of a second, before any executor or job exists) the secret is still readable:
the threat is jobs, which come later.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from pool.settings import SETTINGS, Settings, load_settings
from pool.undumpable import make_undumpable

HANDOVER_ENV = "POOLCTL_HANDOVER_FD"
PIPE_BYTES = 60 * 1024  # a pipe holds 64 KiB before a write blocks (and nobody reads yet)


class HandoverError(Exception):
    """The secrets could not be handed over; the message is the one line to print."""


def inline_secrets(settings: Settings) -> dict[str, dict[str, Any]]:
    """The secret settings given in the environment or as a flag: ``{"env": {VAR: value},
    "flags": {name: value}}`` (empty when every secret came from a file or is unset)."""
    env: dict[str, str] = {}
    flags: dict[str, Any] = {}
    for row in SETTINGS:
        if not row.secret or row.name not in settings.values:
            continue
        source = settings.source(row.name)
        if source == "flag":
            flags[row.name] = settings.values[row.name]
        elif source.startswith("env:") and "=" not in source:  # not env:X_FILE=path
            name = source.split(":", 1)[1]
            env[name] = os.environ[name]
    return {"env": env, "flags": flags} if env or flags else {}


def without_flags(argv: list[str], flags: list[str]) -> list[str]:
    """``argv`` with each ``--flag VALUE`` and ``--flag=VALUE`` of ``flags`` left out."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not any(arg.startswith(flag + "=") for flag in flags):
            out.append(arg)
    return out


def reexec_without_secrets(settings: Settings) -> None:
    """Re-execute this process without its inline secrets (never returns), or return at once
    when there are none."""
    secrets = inline_secrets(settings)
    if not secrets:
        return
    data = json.dumps(secrets).encode()
    if len(data) > PIPE_BYTES:
        raise HandoverError(f"the secret settings are larger than {PIPE_BYTES} bytes")
    secret_env = {env for row in SETTINGS if row.secret for env in row.env}
    env = {k: v for k, v in os.environ.items() if k not in secret_env}
    flags = [row.flag for row in SETTINGS if row.secret and row.name in secrets["flags"]]
    argv = [sys.executable, *without_flags(list(sys.orig_argv[1:]), flags)]
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    env[HANDOVER_ENV] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def handed_over() -> bool:
    """Whether this process is the re-executed one, with secrets waiting in a pipe."""
    return HANDOVER_ENV in os.environ


def receive_secrets(settings: Settings) -> Settings:
    """After the re-exec: the settings again, with the secrets read from the pipe (and the
    pipe closed)."""
    fd_text = os.environ.pop(HANDOVER_ENV)
    make_undumpable()  # before the secret is in this process's memory
    try:
        fd = int(fd_text)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        os.close(fd)
        secrets = json.loads(b"".join(chunks))
    except (ValueError, OSError) as exc:
        raise HandoverError(f"the secrets handed over by the previous exec could not be read: "
                            f"{exc}") from None
    flags = {name: value for name, value in settings.values.items()
             if settings.source(name) == "flag"} | secrets["flags"]
    fresh = load_settings(flags, env={**os.environ, **secrets["env"]},
                          config_path=settings.config_path, command="start")
    fresh.handed_env = dict(secrets["env"])
    return fresh
