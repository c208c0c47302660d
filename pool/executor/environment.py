"""The environments of executors and shims: explicit allowlists, never a ``WORKER_*`` variable.

Secrets stay in the supervisor (DESIGN.md). An executor is started with only what it needs to
run Python and npm; a shim gets less still: ``PATH``, a throwaway ``HOME`` and the variables an
operator's network needs (proxies, an extra CA bundle, time zone, locale), plus names the
operator adds with ``--env-allowlist``. A ``WORKER_*`` name is refused even when allowlisted,
because that prefix is where the worker secret and Lightning's keys live.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# what operators need to reach the network from adaptors (ws-worker's env is empty; these are
# the few a proxied or private-CA deployment cannot do without)
SHIM_ALLOWLIST: tuple[str, ...] = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "NODE_EXTRA_CA_CERTS", "TZ", "LANG",
)

# what the executor itself needs on top: its interpreter (a venv or PYTHONPATH install) and
# npm's own configuration for autoinstall (a private registry or mirror)
EXECUTOR_ALLOWLIST: tuple[str, ...] = (
    "PATH", "HOME", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR",
)
NPM_PREFIXES: tuple[str, ...] = ("npm_config_", "NPM_CONFIG_")

FORBIDDEN_PREFIX = "WORKER_"


def refused_names(extra: Iterable[str]) -> list[str]:
    """The allowlisted names that will not be passed on (``WORKER_*``), to warn about them."""
    return [name for name in extra if name.upper().startswith(FORBIDDEN_PREFIX)]


def _allowed(names: Iterable[str]) -> list[str]:
    return [name for name in names if name and not name.upper().startswith(FORBIDDEN_PREFIX)]


def shim_env(source: Mapping[str, str], extra: Iterable[str], home: str) -> dict[str, str]:
    """The whole environment of a shim: PATH, HOME=``home``, the allowlist and ``extra``."""
    env = {"PATH": source.get("PATH") or DEFAULT_PATH, "HOME": home}
    for name in (*SHIM_ALLOWLIST, *_allowed(extra)):
        if name in source and name not in env:
            env[name] = source[name]
    return env


def executor_env(source: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The environment an executor process starts with: enough for Python, npm and its shims.

    It carries the shims' allowlist too, since a shim's environment is built from its
    executor's.
    """
    env: dict[str, str] = {}
    for name in (*EXECUTOR_ALLOWLIST, *SHIM_ALLOWLIST, *_allowed(extra)):
        if name in source:
            env[name] = source[name]
    for name, value in source.items():
        if name.startswith(NPM_PREFIXES):
            env[name] = value
    env.setdefault("PATH", DEFAULT_PATH)
    return env
