"""Settings read from files (``WORKER_SECRET_FILE`` and the other ``*_FILE`` forms).

A secret in the environment can be read from ``/proc/<pid>/environ`` by any process of the same
uid, and a secret on the command line by every user (``/proc/<pid>/cmdline``); a file readable
only by its owner is neither. So the file must really be private: poolctl checks its mode as
ssh checks a private key's, on the open file (no race between the check and the read):

* readable by every user (``o+r``): refused — the secret is not a secret on this machine;
* readable by the file's group (``g+r``): a warning — Kubernetes gives secret volumes group
  read when the pod sets ``fsGroup``, and the group is then the pod's own;
* writable by anyone but the owner (``g+w``, ``o+w``): refused, for every ``*_FILE`` (a public
  key others can replace lets them sign run tokens).

The content is the value with surrounding whitespace (a trailing newline) removed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

MAX_BYTES = 64 * 1024  # a secret or a few public keys; anything larger is a wrong path


class SecretFileError(ValueError):
    """The file cannot be used; the message names it and says how to fix it."""


@dataclass(frozen=True)
class FileValue:
    value: str
    warnings: tuple[str, ...] = ()


def read_setting_file(path: str, env_name: str, secret: bool) -> FileValue:
    """The value held by ``path`` for the setting ``env_name``; SecretFileError if unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretFileError(f"{env_name}_FILE: cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(f"{env_name}_FILE: {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        warnings = check_mode(path, env_name, mode, secret)
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise SecretFileError(f"{env_name}_FILE: {path} is larger than {MAX_BYTES} bytes")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretFileError(f"{env_name}_FILE: {path} is not UTF-8 text") from None
    if not value:
        raise SecretFileError(f"{env_name}_FILE: {path} is empty")
    return FileValue(value, warnings)


def check_mode(path: str, env_name: str, mode: int, secret: bool) -> tuple[str, ...]:
    """Refuse a file others may change (or, for a secret, read); warnings for group read."""
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SecretFileError(
            f"{env_name}_FILE: {path} has mode {mode:04o}: other users can change it; "
            f"chmod go-w {path}")
    if not secret:
        return ()
    if mode & stat.S_IROTH:
        raise SecretFileError(
            f"{env_name}_FILE: {path} has mode {mode:04o}: every user can read the secret; "
            f"chmod 600 {path} (Kubernetes: defaultMode: 0400 on the secret volume)")
    if mode & stat.S_IRGRP:
        return (f"{env_name}_FILE: {path} has mode {mode:04o}: its group can read the secret "
                "(fine for a pod's own fsGroup; otherwise chmod 600)",)
    return ()
