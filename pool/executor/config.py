"""The ``init`` message: an executor's settings, and the limits a run may override.

Settings reach an executor in its first message, never through the environment (DESIGN.md,
"Fork before work"). ``init_message`` builds it from the settings table so the supervisor,
``poolctl execute`` and the benchmark start executors the same way; ``ExecutorConfig`` reads
and checks it on the executor's side, where a bad value is a boot failure (exit 3) with a
message naming the field.

The ``init`` fields (extend, don't rename)::

    node            Node binary for the shims
    repo_dir        the adaptor repo
    isolation       strict | context | cold | noop
    env_allowlist   extra variable names passed to shims
    recycle         {runs, jitter, rss_mb}: context mode's recycling
    limits          {timeout_ms, memory_mb, payload_mb, log_payload_mb}: a run's defaults
    options         {state_props_to_remove, job_log_level, sanitize}: a run's defaults
    prewarm         adaptor specifiers every shim imports before its first run
    adaptors        {offline, install_timeout, latest_ttl, allowlist}: the adaptor repo's settings
    boot_timeout    seconds a shim may take to report ready (and warm)
    prepare         strict/context: use and make prepared adaptors and the compile cache
    sandbox         {mode, uids, tmp_mb, pids, nofile, fsize_mb, hosts_file}: how shims are
                    sandboxed (pool.executor.sandbox); mode is resolved, never ``auto``
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pool.executor.sandbox import SandboxConfig, base_config, resolve_mode
from pool.settings import default_of

ISOLATION_MODES = ("strict", "context", "cold", "noop")


class ConfigError(ValueError):
    """An ``init`` or ``limits`` value the executor cannot use; the message names the field."""


@dataclass(frozen=True)
class Limits:
    """A run's limits; the same four fields as the ``run`` message's ``limits``."""

    timeout_ms: int = int(default_of("max_run_duration") * 1000)
    memory_mb: int = default_of("run_memory_mb")
    payload_mb: float = default_of("payload_mb")
    log_payload_mb: float = default_of("log_payload_mb")

    def merged(self, override: Any) -> Limits:
        """These limits with a run's own ``limits`` applied (missing or null fields keep ours)."""
        if override is None:
            return self
        if not isinstance(override, dict):
            raise ConfigError("limits must be an object")
        values = asdict(self)
        for key, value in override.items():
            if key in values and value is not None:
                values[key] = value
        return Limits.checked(values)

    @staticmethod
    def checked(values: dict[str, Any]) -> Limits:
        out: dict[str, Any] = {}
        for key in ("timeout_ms", "memory_mb", "payload_mb", "log_payload_mb"):
            value = values.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"limits.{key} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"limits.{key} must be above 0, got {value!r}")
            out[key] = int(value) if key in ("timeout_ms", "memory_mb") else float(value)
        return Limits(**out)


@dataclass(frozen=True)
class Recycle:
    runs: int = 500
    jitter: int = 50
    rss_mb: int = 400


@dataclass(frozen=True)
class ExecutorConfig:
    node: str = "node"
    repo_dir: str = ""
    isolation: str = "strict"
    env_allowlist: tuple[str, ...] = ()
    recycle: Recycle = field(default_factory=Recycle)
    limits: Limits = field(default_factory=Limits)
    options: dict[str, Any] = field(default_factory=dict)
    prewarm: tuple[str, ...] = ()
    offline: bool = False
    install_timeout: float = 120.0
    latest_ttl: float = 3600.0
    boot_timeout: float = 60.0
    allowlist: tuple[str, ...] = ()  # adaptors runs may use (empty: any @openfn/*)
    prepare: bool = True
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    @staticmethod
    def from_message(message: dict[str, Any]) -> ExecutorConfig:
        """Read and check an ``init`` message; raises ConfigError naming the bad field."""
        isolation = message.get("isolation", "strict")
        if isolation not in ISOLATION_MODES:
            raise ConfigError(f"isolation must be one of {', '.join(ISOLATION_MODES)}, "
                              f"got {isolation!r}")
        node = message.get("node") or "node"
        repo_dir = message.get("repo_dir")
        if isolation != "noop" and not (isinstance(repo_dir, str) and repo_dir):
            raise ConfigError("repo_dir is required")
        recycle = message.get("recycle") or {}
        adaptors = message.get("adaptors") or {}
        try:
            return ExecutorConfig(
                node=str(node),
                repo_dir=str(repo_dir or ""),
                isolation=isolation,
                env_allowlist=tuple(_strings(message.get("env_allowlist"), "env_allowlist")),
                recycle=Recycle(
                    runs=max(1, int(recycle.get("runs", 500))),
                    jitter=max(0, int(recycle.get("jitter", 50))),
                    rss_mb=max(1, int(recycle.get("rss_mb", 400))),
                ),
                limits=Limits().merged(message.get("limits")),
                options=dict(message.get("options") or {}),
                prewarm=tuple(_strings(message.get("prewarm"), "prewarm")),
                offline=bool(adaptors.get("offline", False)),
                install_timeout=float(adaptors.get("install_timeout", 120.0)),
                latest_ttl=float(adaptors.get("latest_ttl", 3600.0)),
                boot_timeout=float(message.get("boot_timeout", 60.0)),
                allowlist=tuple(_strings(adaptors.get("allowlist"), "adaptors.allowlist")),
                prepare=bool(message.get("prepare", True)),
                sandbox=SandboxConfig.from_message(message.get("sandbox")),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"init message: {exc}") from None


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings")
    return list(value)


def sandbox_message(settings: Any, slot: int = 0) -> dict[str, Any]:
    """The ``sandbox`` field for ``settings`` (``auto`` resolved, not probed: the supervisor and
    ``poolctl execute`` probe it at start-up and put their checked choice in ``sandbox``)."""
    if getattr(settings, "sandbox", None) is None:
        return SandboxConfig().to_message()
    config = base_config(settings, slot)
    return replace(config, mode=resolve_mode(config.mode)).to_message()


def init_message(settings: Any, **overrides: Any) -> dict[str, Any]:
    """The ``init`` message for a resolved ``pool.settings.Settings`` (overrides win)."""
    message: dict[str, Any] = {
        "type": "init",
        "node": settings.node,
        "repo_dir": settings.repo_dir,
        "isolation": settings.isolation,
        "env_allowlist": list(settings.env_allowlist),
        "recycle": {"runs": settings.recycle_runs, "jitter": settings.recycle_jitter,
                    "rss_mb": settings.recycle_rss_mb},
        "limits": {"timeout_ms": int(settings.max_run_duration * 1000),
                   "memory_mb": settings.run_memory_mb,
                   "payload_mb": settings.payload_mb,
                   "log_payload_mb": settings.log_payload_mb},
        "options": {"state_props_to_remove": list(settings.state_props_to_remove)},
        "prewarm": list(settings.prewarm_adaptors),
        "adaptors": {"offline": settings.adaptors_offline,
                     "install_timeout": settings.install_timeout,
                     "latest_ttl": settings.latest_ttl,
                     "allowlist": list(getattr(settings, "adaptor_allowlist", []))},
        "boot_timeout": getattr(settings, "boot_timeout", 60.0),
        "prepare": getattr(settings, "prepare_adaptors", True),
        "sandbox": sandbox_message(settings),
    }
    message.update(overrides)
    return message
