"""One declarative table of every poolctl setting.

Each row names a setting once: its attribute name, its CLI flag, the environment variables
that set it (ws-worker's names first, so poolctl is a drop-in), its type, default and help.
The CLI's options and ``--help`` are generated from this table, values are resolved
flag > environment > config file > default, and every resolved value remembers where it came
from so ``poolctl start`` can log it.

Config files are TOML, keyed by setting name (``size = 4``) or by one of its environment
variable names (``WORKER_CAPACITY = 4``), so a file written by ``poolctl tune --write`` and an
operator's hand-written one read the same.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pool.secret_files import SecretFileError, read_setting_file


class SettingsError(ValueError):
    """A setting has a value poolctl cannot use; the message names the setting and its source."""


def parse_bool(value: Any) -> bool:
    """ws-worker accepts ``true``/``1`` for booleans; we also accept yes/on and their negations."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def parse_list(value: Any) -> list[str]:
    """Comma-separated lists, as ws-worker reads them from the environment."""
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    return int(str(value).strip())


def parse_float(value: Any) -> float:
    return float(str(value).strip())


def parse_str(value: Any) -> str:
    return str(value)


@dataclass(frozen=True)
class Bound:
    """The values a numeric row accepts: ``low`` (inclusive, or not with ``above``) up to
    ``high`` (inclusive). Shown in ``--help``; a value outside is a SettingsError."""

    low: float
    high: float | None = None
    above: bool = False

    def problem(self, value: float) -> str | None:
        """Why ``value`` is refused, or None."""
        if self.high is not None and not self.low <= value <= self.high:
            return f"must be between {self}, got {value:g}"
        if self.above and not value > self.low:
            return f"must be {self}, got {value:g}"
        if not self.above and not value >= self.low:
            return f"must be {self}, got {value:g}"
        return None

    def __str__(self) -> str:
        if self.high is not None:
            return f"{self.low:g} and {self.high:g}"
        return f"{'above' if self.above else 'at least'} {self.low:g}"


def at_least(low: float) -> Bound:
    return Bound(low)


def above(low: float) -> Bound:
    return Bound(low, above=True)


def between(low: float, high: float) -> Bound:
    return Bound(low, high)


TYPE_NAMES: dict[Callable[[Any], Any], str] = {
    parse_bool: "BOOL",
    parse_list: "LIST",
    parse_int: "INT",
    parse_float: "FLOAT",
    parse_str: "TEXT",
}


@dataclass(frozen=True)
class Setting:
    """One row of the table."""

    name: str
    flag: str | None
    env: tuple[str, ...]
    type: Callable[[Any], Any]
    default: Any
    help: str
    commands: tuple[str, ...] = ("start",)
    secret: bool = False
    # the values poolctl can use (None: any): refused where the settings are read, exit 2,
    # rather than found later by an executor that boots and dies (issue 13)
    check: Bound | None = None
    # a ``*_file`` row: its value is a path, and the file's content is the value of the
    # setting named here (Docker's and Kubernetes' way of handing over a secret)
    file_of: str | None = None

    @property
    def metavar(self) -> str:
        return TYPE_NAMES.get(self.type, "VALUE")


# Below this a shim cannot boot and run even an empty job (measured: Node's heap limit at 8 MB
# boots but every run is an OOMError; at 6 MB or less the shim dies while booting).
MIN_RUN_MEMORY_MB = 32

START = ("start",)
RUNS = ("start", "execute", "bench", "tune")
REPO = ("start", "execute", "install", "bench", "tune")
ROOT_HOME = "/var/lib/poolctl"  # a root pool's own folder: repo and state below it


def default_repo_dir() -> str:
    """ws-worker's ``~/.openfn/worker/repo``, except for root: root's home is closed to other
    users, and the ``uid`` sandbox (the default for root) runs shims as slot uids that must read
    the repo. The unit, the compose file and the manifests use the same folder."""
    if os.geteuid() == 0:
        return f"{ROOT_HOME}/repo"
    return str(Path.home() / ".openfn" / "worker" / "repo")


def default_state_dir() -> str:
    """Where the journal of claimed runs lives: /var/lib/poolctl/state for root, else the XDG
    state home; never under the adaptor repo or the shim code, which a shim's sandbox can see."""
    if os.geteuid() == 0:
        return f"{ROOT_HOME}/state"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "poolctl")

SETTINGS: tuple[Setting, ...] = (
    # --- Lightning connection (ws-worker names) ---------------------------------------------
    Setting("lightning_url", "--lightning", ("WORKER_LIGHTNING_SERVICE_URL",), parse_str,
            "ws://localhost:4000/worker", "Lightning's worker socket endpoint.", START),
    Setting("secret", "--secret", ("WORKER_SECRET",), parse_str, None,
            "Shared secret that signs the worker token (HS256), used as-is.", START, secret=True),
    Setting("secret_file", "--secret-file", ("WORKER_SECRET_FILE",), parse_str, None,
            "File holding WORKER_SECRET (mode 0600 or 0400: a file every user may read is refused); "
            "read again on SIGHUP.", START, file_of="secret"),
    Setting("lightning_public_key", "--lightning-public-key", ("WORKER_LIGHTNING_PUBLIC_KEY",),
            parse_str, None,
            "Base64 PEM public key that verifies run tokens (RS256); unset = not verified. Two "
            "keys, comma-separated, while Lightning switches keys: a token either verifies passes.",
            START),
    Setting("lightning_public_key_file", "--lightning-public-key-file",
            ("WORKER_LIGHTNING_PUBLIC_KEY_FILE",), parse_str, None,
            "File holding WORKER_LIGHTNING_PUBLIC_KEY (not writable by others); read again on "
            "SIGHUP.", START, file_of="lightning_public_key"),
    Setting("size", "--size", ("WORKER_CAPACITY",), parse_int, 5,
            "Executors in the pool = runs at once (ws-worker's capacity).", START,
            check=at_least(1)),
    Setting("max_size", "--max-size", ("WORKER_MAX_POOL_SIZE",), parse_int, None,
            "Largest size accepted at start and by scale (default: memory, the cgroup's "
            "memory.max where set, else the host's, over an executor's footprint).", START),
    Setting("workloops", "--workloops", ("WORKER_WORKLOOPS",), parse_str, None,
            "Queue preferences with slots, e.g. 'fast_lane:1 manual>*:4'; excludes --size.", START),
    Setting("backoff", "--backoff", ("WORKER_BACKOFF",), parse_str, "1/10",
            "min/max seconds between empty claims.", START),
    Setting("message_timeout", "--message-timeout",
            ("WORKER_MESSAGE_TIMEOUT_SECONDS", "WORKER_SOCKET_TIMEOUT_SECONDS"), parse_float, 30.0,
            "Seconds to wait for Lightning's reply to a run-channel message.", START,
            check=above(0)),
    Setting("claim_timeout", "--claim-timeout", ("WORKER_CLAIM_TIMEOUT_SECONDS",), parse_float,
            3600.0, "Seconds to wait for a claim reply.", START, check=above(0)),
    Setting("batch_logs", "--batch-logs", ("WORKER_BATCH_LOGS",), parse_bool, False,
            "Send logs as run:batch_logs.", START),
    Setting("batch_interval", "--batch-interval", ("WORKER_BATCH_INTERVAL",), parse_int, 10,
            "Milliseconds a log batch waits for more lines.", START, check=at_least(0)),
    Setting("batch_limit", "--batch-limit", ("WORKER_BATCH_LIMIT",), parse_int, 50,
            "Most log lines in one batch.", START, check=at_least(1)),
    Setting("worker_name", "--worker-name", ("WORKER_NAME", "DEPLOYED_POD_NAME"), parse_str, None,
            "worker_name sent with each claim.", START),
    Setting("collections_url", "--collections-url", ("WORKER_COLLECTIONS_URL",), parse_str, None,
            "Collections endpoint; unset = collections disabled.", START),
    Setting("collections_version", "--collections-version", ("WORKER_COLLECTIONS_VERSION",),
            parse_str, "latest", "Version of @openfn/language-collections given to jobs.", START),
    Setting("port", "--port", ("WORKER_PORT",), parse_int, 2222,
            "HTTP port for /livez, /readyz and /metrics (also keys the control socket).",
            ("start", "status", "scale", "drain", "stop"), check=between(0, 65535)),
    Setting("log_level", "--log", ("WORKER_LOG_LEVEL",), parse_str, "info",
            "Log level: debug, info, warn, error.", ("start", "execute", "dev-server", "install")),
    Setting("sentry_dsn", "--sentry-dsn", ("WORKER_SENTRY_DSN",), parse_str, None,
            "Send errors to Sentry.", START, secret=True),
    Setting("sentry_dsn_file", "--sentry-dsn-file", ("WORKER_SENTRY_DSN_FILE",), parse_str, None,
            "File holding WORKER_SENTRY_DSN (owner-only mode).", START, file_of="sentry_dsn"),
    Setting("sentry_env", "--sentry-env", ("WORKER_SENTRY_ENV",), parse_str, "dev",
            "Sentry environment name.", START),
    # --- run limits (ws-worker names and defaults) ---------------------------------------------
    Setting("max_run_duration", "--max-run-duration-seconds", ("WORKER_MAX_RUN_DURATION_SECONDS",),
            parse_float, 300.0, "Default run timeout in seconds.", RUNS, check=above(0)),
    Setting("run_memory_mb", "--run-memory", ("WORKER_MAX_RUN_MEMORY_MB",), parse_int, 500,
            "Default run memory limit in MB (V8 heap and RSS growth).", RUNS,
            check=at_least(MIN_RUN_MEMORY_MB)),
    Setting("payload_mb", "--payload-memory", ("WORKER_MAX_PAYLOAD_MB",), parse_float, 10.0,
            "Largest output state sent back, in MB.", RUNS, check=above(0)),
    Setting("log_payload_mb", "--log-payload-memory", ("WORKER_MAX_LOG_PAYLOAD_MB",), parse_float,
            1.0, "Largest log line sent back, in MB.", RUNS, check=above(0)),
    Setting("state_props_to_remove", "--state-props-to-remove", ("WORKER_STATE_PROPS_TO_REMOVE",),
            parse_list, ["configuration", "response"],
            "Top-level state keys removed from every step's output.", RUNS),
    Setting("max_frame_bytes", "--max-frame-bytes", ("WORKER_MAX_FRAME_BYTES",), parse_int,
            11_000_000,
            "Largest WebSocket frame Lightning accepts (its max_frame_size): bigger events are "
            "made to fit (dataclip withheld, log line or final state redacted, log batches "
            "split). 0 = no limit (older Lightnings).", START, check=at_least(0)),
    # --- adaptors ---------------------------------------------------------------------------------
    Setting("repo_dir", "--repo-dir", ("WORKER_REPO_DIR",), parse_str, default_repo_dir(),
            "Adaptor repo (npm folder) shared by every executor.", REPO),
    Setting("seed_repo", "--seed-repo", ("WORKER_SEED_REPO",), parse_str, None,
            "Read-only adaptor repo (a container image's baked adaptors) whose adaptors are "
            "copied into --repo-dir at start when it lacks them; unset = none.", START),
    Setting("adaptors_offline", "--offline", ("WORKER_ADAPTORS_OFFLINE",), parse_bool, False,
            "Use only installed adaptors; never call npm.", REPO),
    Setting("install_timeout", "--install-timeout", ("WORKER_INSTALL_TIMEOUT_SECONDS",),
            parse_float, 120.0, "Seconds one npm install may take.", REPO, check=above(0)),
    Setting("latest_ttl", "--latest-ttl", ("WORKER_LATEST_TTL_SECONDS",), parse_float, 3600.0,
            "Seconds an @latest lookup is cached.", REPO, check=at_least(0)),
    Setting("prewarm_adaptors", "--prewarm", ("WORKER_PREWARM_ADAPTORS",), parse_list, [],
            "Adaptors each executor imports before its first run.", RUNS),
    Setting("adaptor_allowlist", "--adaptor-allowlist", ("WORKER_ADAPTOR_ALLOWLIST",),
            parse_list, [],
            "Adaptors runs may use: names (any version) or name@version (that version only); "
            "empty = every @openfn/* adaptor. A run naming another fails (AutoinstallError).",
            RUNS),
    Setting("prepare_adaptors", "--prepare-adaptors", ("WORKER_PREPARE_ADAPTORS",), parse_bool,
            True, "strict/context: prepare each used adaptor in the background (one-file ESM "
            "bundle checked against the package, Node's compile cache) so shims load it faster; "
            "false keeps every adaptor plain.", (*RUNS, "install")),
    # --- the pool (poolctl's own) -----------------------------------------------------------------
    Setting("isolation", "--isolation", ("WORKER_ISOLATION",), parse_str, "strict",
            "strict | context | cold | noop: how runs are kept apart in an executor.", RUNS),
    Setting("sandbox", "--sandbox", ("WORKER_SANDBOX",), parse_str, "auto",
            "auto | uid | namespaces | none: the OS sandbox each shim runs in (auto: uid as "
            "root, else namespaces). strict refuses to start without one unless none.", RUNS),
    Setting("sandbox_uids", "--sandbox-uids", ("WORKER_SANDBOX_UIDS",), parse_str,
            "880000-889999", "uid mode: uids no other account uses; two per executor.", RUNS),
    Setting("sandbox_tmp_mb", "--sandbox-tmp-mb", ("WORKER_SANDBOX_TMP_MB",), parse_int, 64,
            "Size in MB of a sandbox's private /tmp, and of its HOME.", RUNS),
    Setting("sandbox_pids", "--sandbox-pids", ("WORKER_SANDBOX_PIDS",), parse_int, 256,
            "Most tasks (processes and threads) in one sandbox.", RUNS),
    Setting("sandbox_nofile", "--sandbox-nofile", ("WORKER_SANDBOX_NOFILE",), parse_int, 1024,
            "Most open files per process in a sandbox.", RUNS),
    Setting("sandbox_fsize_mb", "--sandbox-fsize-mb", ("WORKER_SANDBOX_FSIZE_MB",), parse_int,
            256, "Largest file a sandboxed process may write, in MB.", RUNS),
    Setting("sandbox_hosts_file", "--sandbox-hosts-file", ("WORKER_SANDBOX_HOSTS_FILE",),
            parse_str, None, "File bound as /etc/hosts in sandboxes (default: the host's).",
            RUNS),
    Setting("node", "--node", ("WORKER_NODE_BINARY",), parse_str, "node",
            "Node.js binary the shims run on.", (*RUNS, "install")),
    Setting("env_allowlist", "--env-allowlist", ("WORKER_ENV_ALLOWLIST",), parse_list, [],
            "Extra environment variables passed to shims (beyond proxies, CA, TZ, LANG).", RUNS),
    Setting("recycle_runs", "--recycle-runs", ("WORKER_RECYCLE_RUNS",), parse_int, 500,
            "context mode: replace a shim after this many runs (with jitter).", RUNS,
            check=at_least(1)),
    Setting("recycle_jitter", "--recycle-jitter", ("WORKER_RECYCLE_JITTER",), parse_int, 50,
            "Random extra runs added to --recycle-runs per shim.", RUNS, check=at_least(0)),
    Setting("recycle_rss_mb", "--recycle-rss", ("WORKER_RECYCLE_RSS_MB",), parse_int, 400,
            "Replace an idle shim whose RSS is above this many MB.", RUNS, check=at_least(1)),
    Setting("boot_timeout", "--boot-timeout", ("WORKER_BOOT_TIMEOUT_SECONDS",), parse_float, 60.0,
            "Seconds an executor may take to report ready.", START, check=above(0)),
    Setting("graceful_timeout", "--graceful-timeout", ("WORKER_GRACEFUL_TIMEOUT_SECONDS",),
            parse_float, None, "Seconds runs may take to finish on SIGTERM (default: max run "
            "duration).", START, check=at_least(0)),
    Setting("outbox_cap_mb", "--outbox-cap-mb", ("WORKER_OUTBOX_CAP_MB",), parse_float, 64.0,
            "MB of one run's events kept while Lightning is slow or unreachable; above it, log "
            "lines are dropped (oldest first, counted and logged), never lifecycle events.",
            START, check=above(0)),
    Setting("state_dir", "--state-dir", ("WORKER_STATE_DIR",), parse_str, default_state_dir(),
            "Directory of the journal of claimed runs (holds run tokens: 0700/0600), replayed "
            "at start to report runs a killed supervisor left behind.", START),
    Setting("state_fsync", "--state-fsync", ("WORKER_STATE_FSYNC",), parse_bool, False,
            "Also fsync the journal (off the loop) so it survives a host crash, not only the "
            "supervisor's death.", START),
    Setting("control_socket", "--control-socket", ("WORKER_CONTROL_SOCKET",), parse_str, None,
            "Unix socket for status/scale/drain (default keyed by --port).",
            ("start", "status", "scale", "drain", "stop")),
    Setting("http_host", "--http-host", ("WORKER_HTTP_HOST",), parse_str, "0.0.0.0",
            "Interface for the HTTP server.", START),
    Setting("log_format", "--log-format", ("WORKER_LOG_FORMAT",), parse_str, "text",
            "text | json.", ("start", "execute", "dev-server")),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

# ws-worker variables poolctl reads but does not act on: named in a warning, never ignored
# silently. The value says why.
UNSUPPORTED_ENV: dict[str, str] = {
    "WORKER_TIMEOUT_RETRY_COUNT": "retries are disabled in ws-worker too (they duplicated data)",
    "WORKER_TIMEOUT_RETRY_DELAY_MS": "retries are disabled in ws-worker too",
    "WORKER_VALIDATION_TIMEOUT_MS": "engine-multi's handshake; poolctl executors report ready",
    "WORKER_VALIDATION_RETRIES": "engine-multi's handshake; poolctl executors report ready",
    "WORKER_PROFILE": "memory is reported on every step:complete already",
    "WORKER_PROFILE_POLL_INTERVAL_MS": "memory is reported on every step:complete already",
    "OPENFN_ADAPTORS_REPO": "@local adaptors from a monorepo are not supported",
}

SOURCES = ("flag", "env", "file", "default")


@dataclass
class Settings:
    """Resolved values plus where each came from (``flag``, ``env:NAME``, ``file``, ``default``)."""

    values: dict[str, Any]
    sources: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    config_path: str | None = None  # the --config file, read again on SIGHUP
    # secrets the supervisor took out of its environment when it re-executed itself
    # (pool/supervisor/handover.py): read as environment again on SIGHUP
    handed_env: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def source(self, name: str) -> str:
        return self.sources[name]

    def is_default(self, name: str) -> bool:
        return self.sources[name] == "default"

    def with_values(self, **overrides: Any) -> Settings:
        """A copy with some values replaced (marked as ``flag``): used by bench and tune."""
        values = dict(self.values) | overrides
        sources = dict(self.sources) | {k: "flag" for k in overrides}
        return Settings(values, sources, list(self.warnings), self.config_path,
                        dict(self.handed_env))

    def describe(self, set_only: bool = False) -> list[str]:
        """One line per setting with its source (with ``set_only``, only those not left at
        their default); secrets are masked."""
        lines = []
        for row in SETTINGS:
            if row.name not in self.values or (set_only and self.is_default(row.name)):
                continue
            value = self.values[row.name]
            if row.secret and value:
                value = "****"
            lines.append(f"{row.name}={value!r} ({self.sources[row.name]})")
        return lines


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file into ``{setting name: value}``; unknown keys are an error."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    by_env = {env: row.name for row in SETTINGS for env in row.env}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key if key in BY_NAME else by_env.get(key)
        if name is None:
            raise SettingsError(f"config file {path}: unknown setting {key!r}")
        out[name] = value
    return out


def _convert(row: Setting, value: Any, source: str) -> Any:
    if value is None:
        return None
    where = row.flag if source == "flag" else source
    try:
        converted = row.type(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{row.name} ({where}): {exc}") from None
    problem = row.check.problem(converted) if row.check is not None else None
    if problem is not None:
        raise SettingsError(f"{row.name} ({where}): {problem}")
    return converted


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    command: str | None = None,
) -> Settings:
    """Resolve every setting (or those of one command): flag > env > config file > default.

    ``flags`` holds values given on the command line (``None`` = not given).
    """
    flags = flags or {}
    env = os.environ if env is None else env
    file_values = read_config_file(config_path) if config_path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for row in SETTINGS:
        if command is not None and command not in row.commands:
            continue
        if flags.get(row.name) is not None:
            values[row.name] = _convert(row, flags[row.name], "flag")
            sources[row.name] = "flag"
            continue
        env_name = next((e for e in row.env if env.get(e, "") != ""), None)
        if env_name is not None:
            values[row.name] = _convert(row, env[env_name], f"env:{env_name}")
            sources[row.name] = f"env:{env_name}"
        elif row.name in file_values:
            values[row.name] = _convert(row, file_values[row.name], "file")
            sources[row.name] = "file"
        else:
            values[row.name] = row.default
            sources[row.name] = "default"
    warnings = [
        f"{name} is set but poolctl does not support it: {why}"
        for name, why in UNSUPPORTED_ENV.items()
        if env.get(name)
    ]
    warnings += read_files(values, sources)
    return Settings(values, sources, warnings,
                    os.fspath(config_path) if config_path is not None else None)


def _rank(source: str) -> int:
    """flag 0 > env 1 > config file 2 > default 3: a ``*_file`` row competes on these levels."""
    return SOURCES.index(source.split(":", 1)[0])


def read_files(values: dict[str, Any], sources: dict[str, str]) -> list[str]:
    """Fill the settings whose ``*_file`` row is set from their files (in place); warnings.

    A value and its file compete like any two sources (the flag beats the environment, ...);
    both given at the same level is ambiguous and refused. The source then reads like
    ``env:WORKER_SECRET_FILE=/run/secrets/worker`` (or ``file:secret_file=...``), which names
    the file, never the value.
    """
    warnings: list[str] = []
    for row in SETTINGS:
        path = values.get(row.name)
        if row.file_of is None or row.file_of not in values or path is None:
            continue
        target = BY_NAME[row.file_of]
        if _rank(sources[row.name]) == _rank(sources[target.name]):
            raise SettingsError(
                f"{target.name} is given twice, as {sources[target.name]} and as "
                f"{sources[row.name]}: set only one of them")
        if _rank(sources[row.name]) > _rank(sources[target.name]):
            continue  # the value itself was given at a stronger level
        try:
            read = read_setting_file(str(path), target.env[0], target.secret)
        except SecretFileError as exc:
            raise SettingsError(str(exc)) from None
        values[target.name] = _convert(target, read.value, sources[row.name])
        origin = sources[row.name]
        sources[target.name] = (f"{origin}={path}" if ":" in origin
                                else f"{origin}:{row.name}={path}")
        warnings += read.warnings
    return warnings


def rows_for(command: str) -> Iterable[Setting]:
    return (row for row in SETTINGS if command in row.commands)


def render_help(command: str) -> str:
    """A plain-text table of a command's settings (flag, env, default), for docs and --help."""
    lines = []
    for row in rows_for(command):
        default = "" if row.default is None else f" [default: {row.default}]"
        default += bound_help(row)
        env = " / ".join(row.env)
        lines.append(f"{row.flag:<32} {env:<36} {row.help}{default}")
    return "\n".join(lines)


def default_of(name: str) -> Any:
    """A setting's table default: the one place ws-worker's defaults are written down."""
    return BY_NAME[name].default


def bound_help(row: Setting) -> str:
    """`` [at least 32]`` for a row with bounds, for help texts; empty otherwise."""
    if row.check is None:
        return ""
    return f" [{'between ' if row.check.high is not None else ''}{row.check}]"
