"""``poolctl start``'s settings, checked once before anything starts.

A single value's bounds live in the settings table (``pool.settings``, checked as it is read).
Every other rule that would otherwise surface later as a confusing failure (a missing secret,
an unreadable public key, ``--size`` together with ``WORKER_WORKLOOPS``, a malformed backoff)
is checked here and becomes one line and exit code 2, so an operator fixes the setting instead
of reading a traceback or watching a worker that never claims.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool import __version__
from pool.adaptors import TAGS, AdaptorError, AdaptorRepo, Allowlist, parse_specifier
from pool.executor.config import ISOLATION_MODES, init_message
from pool.executor.sandbox import SandboxError, base_config, choose, parse_uid_range
from pool.executor.shim import SHIM_SCRIPT
from pool.lightning.phoenix import build_socket_url
from pool.lightning.plan import COLLECTIONS_ADAPTOR, Collections, RunDefaults
from pool.lightning.tokens import (
    PublicKeyError,
    RunTokenVerifier,
    make_worker_token,
    new_worker_id,
)
from pool.lightning.workloops import (
    Backoff,
    Workloop,
    WorkloopError,
    default_workloops,
    parse_backoff,
    parse_workloops,
)
from pool.supervisor.journal import pool_identity
from pool.supervisor.sizing import MaxSize, cpu_warning, default_max_size

EXIT_SETTINGS = 2
EXIT_BOOT_FAILURE = 3
# How long after its deadline (token expiry or run timeout) a run's kept events are given up.
RUN_GRACE_S = 60.0
MIN_FRAME_BYTES = 16 * 1024  # room for any event once its dataclip or state is left out


class StartupError(Exception):
    """A setting makes starting pointless; ``str()`` is the one line to print."""

    def __init__(self, message: str, exit_code: int = EXIT_SETTINGS) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class SupervisorConfig:
    """What the arbiter needs, derived from the resolved settings."""

    socket_url: str  # holds the worker token: never log it
    secret_digest: str  # SHA-256 of the worker secret: tells SIGHUP whether it changed
    lightning_url: str
    worker_id: str
    worker_name: str | None
    workloops: tuple[Workloop, ...]
    backoff: Backoff
    verifier: RunTokenVerifier
    defaults: RunDefaults
    collections: Collections | None
    executor_init: dict[str, Any]
    message_timeout: float
    claim_timeout: float
    boot_timeout: float
    graceful_timeout: float
    batch_logs: bool
    batch_interval_s: float
    batch_limit: int
    # bytes of one run's events kept while Lightning is slow or unreachable (logs dropped above)
    outbox_cap_bytes: int
    # Lightning's max_frame_size: no frame sent is larger (None: no limit, older Lightnings)
    frame_limit_bytes: int | None = None
    # the largest size accepted at start and by scale, and where the figure comes from
    max_size: MaxSize = MaxSize(1_000_000, "no maximum given")
    # the journal of claimed runs (journal.py): its directory, this pool's name in it, fsync
    state_dir: str = ""
    journal_identity: str = ""
    state_fsync: bool = False
    sandbox: str = "none"  # the checked sandbox mode (pool.executor.sandbox)
    sandbox_uids: range | None = None  # uid mode: the range slots take two uids each from
    sandbox_warning: str | None = None

    @property
    def size(self) -> int:
        """Executors in the pool: the sum of the workloops' slots."""
        return sum(loop.capacity for loop in self.workloops)


def load_config(settings: Any, worker_id: str | None = None) -> SupervisorConfig:
    """Check ``settings`` (a ``pool.settings.Settings`` for ``start``); StartupError if unusable.

    ``worker_id``: keep this id (a reload) instead of making a new one.
    """
    if not settings.secret:
        raise StartupError("WORKER_SECRET is not set: poolctl start needs Lightning's worker "
                           "secret (WORKER_SECRET_FILE, WORKER_SECRET or --secret-file)")
    try:
        if settings.workloops:
            if not settings.is_default("size"):
                raise StartupError(
                    f"--size/WORKER_CAPACITY ({settings.source('size')}) and --workloops/"
                    f"WORKER_WORKLOOPS ({settings.source('workloops')}) exclude each other: "
                    "the size is the sum of the workloops' slots")
            workloops = parse_workloops(settings.workloops)
        else:
            workloops = default_workloops(int(settings.size))
        backoff = parse_backoff(settings.backoff)
    except WorkloopError as exc:
        raise StartupError(str(exc)) from None
    try:
        verifier = RunTokenVerifier(settings.lightning_public_key)
    except PublicKeyError as exc:
        raise StartupError(str(exc)) from None
    worker_id = worker_id or new_worker_id()
    try:
        url = build_socket_url(settings.lightning_url,
                               make_worker_token(settings.secret, worker_id), __version__)
    except ValueError as exc:
        raise StartupError(f"WORKER_LIGHTNING_SERVICE_URL: {exc}") from None
    if settings.isolation not in ISOLATION_MODES:
        raise StartupError(f"--isolation must be one of {', '.join(ISOLATION_MODES)}, "
                           f"got {settings.isolation!r}")
    check_allowlist(settings)
    if 0 < settings.max_frame_bytes < MIN_FRAME_BYTES:
        raise StartupError(f"WORKER_MAX_FRAME_BYTES must be 0 (no limit) or at least "
                           f"{MIN_FRAME_BYTES} (every event must fit once made smaller), got "
                           f"{settings.max_frame_bytes}")
    max_size = check_size(settings, sum(loop.capacity for loop in workloops))
    state_dir = check_state_dir(settings.state_dir, settings.repo_dir)
    collections = resolve_collections(settings)
    graceful = settings.graceful_timeout
    sandbox, sandbox_uids, sandbox_warning = check_sandbox(settings, sum(
        loop.capacity for loop in workloops))
    executor_init = init_message(settings, sandbox=sandbox)
    return SupervisorConfig(
        socket_url=url,
        secret_digest=hashlib.sha256(settings.secret.encode()).hexdigest(),
        lightning_url=settings.lightning_url,
        worker_id=worker_id,
        worker_name=settings.worker_name or None,
        workloops=tuple(workloops),
        backoff=backoff,
        verifier=verifier,
        defaults=RunDefaults.from_settings(settings),
        collections=collections,
        executor_init=executor_init,
        message_timeout=float(settings.message_timeout),
        claim_timeout=float(settings.claim_timeout),
        boot_timeout=float(settings.boot_timeout),
        graceful_timeout=float(graceful if graceful is not None else settings.max_run_duration),
        batch_logs=bool(settings.batch_logs),
        batch_interval_s=settings.batch_interval / 1000.0,
        batch_limit=int(settings.batch_limit),
        outbox_cap_bytes=int(settings.outbox_cap_mb * 1024 * 1024),
        frame_limit_bytes=int(settings.max_frame_bytes) or None,
        max_size=max_size,
        state_dir=state_dir,
        journal_identity=pool_identity(settings.worker_name or None, int(settings.port)),
        state_fsync=bool(settings.state_fsync),
        sandbox=sandbox["mode"],
        sandbox_uids=sandbox_uids,
        sandbox_warning=sandbox_warning,
    )


def check_allowlist(settings: Any) -> None:
    """``WORKER_ADAPTOR_ALLOWLIST`` is readable, and permits what the pool itself loads: the
    pre-warmed adaptors (else exit 2) and collections' (else a warning: those runs fail)."""
    try:
        allowed = Allowlist(settings.adaptor_allowlist)
        for spec in settings.prewarm_adaptors:
            name, version = parse_specifier(spec)
            if not allowed.permits(name, None if version in TAGS else version):
                raise StartupError(f"WORKER_PREWARM_ADAPTORS names {spec}, which "
                                   "WORKER_ADAPTOR_ALLOWLIST does not permit")
    except AdaptorError as exc:
        raise StartupError(f"WORKER_ADAPTOR_ALLOWLIST: {exc}") from None
    if settings.collections_url and not allowed.permits(COLLECTIONS_ADAPTOR):
        settings.warnings.append(
            f"WORKER_COLLECTIONS_URL is set but WORKER_ADAPTOR_ALLOWLIST does not permit "
            f"{COLLECTIONS_ADAPTOR}: runs that use collections will fail")


def check_size(settings: Any, size: int) -> MaxSize:
    """The maximum size (sizing.py), with ``size`` refused above it; CPU only warns."""
    if settings.max_size is not None:
        if settings.max_size < 1:
            raise StartupError(f"WORKER_MAX_POOL_SIZE must be at least 1, got "
                               f"{settings.max_size}")
        max_size = MaxSize(int(settings.max_size),
                           f"--max-size/WORKER_MAX_POOL_SIZE ({settings.source('max_size')})")
    else:
        max_size = default_max_size(settings.isolation)
    if size > max_size.size:
        raise StartupError(f"size {size} is over the pool's maximum of {max_size.size} "
                           f"({max_size.why}): lower --size/WORKER_CAPACITY, or raise "
                           f"--max-size/WORKER_MAX_POOL_SIZE if the machine can hold it")
    warning = cpu_warning(size)
    if warning is not None:
        settings.warnings.append(warning)
    return max_size


def check_state_dir(state_dir: str, repo_dir: str) -> str:
    """The journal's directory, made absolute; refused inside what a shim's sandbox sees (the
    adaptor repo, the shim code): the journal holds run tokens, which fetch credentials."""
    if not state_dir:
        raise StartupError("WORKER_STATE_DIR is empty: the journal of claimed runs needs a "
                           "directory (--state-dir)")
    path = Path(state_dir).expanduser().resolve()
    for name, seen in (("the adaptor repo (WORKER_REPO_DIR)", repo_dir),
                       ("the shim code", str(Path(SHIM_SCRIPT).parent))):
        if not seen:
            continue
        other = Path(seen).expanduser().resolve()
        if path == other or other in path.parents:
            raise StartupError(f"WORKER_STATE_DIR {path} is inside {name} {other}, which a "
                               "shim's sandbox can read: the journal holds run tokens; choose "
                               "a directory outside it")
    return str(path)


def check_sandbox(settings: Any, size: int) -> tuple[dict[str, Any], range | None, str | None]:
    """The sandbox every shim will run in, tried once now: ``(init field, uid range, warning)``.
    An explicit mode that cannot work, or ``strict`` with none available, is exit 2."""
    try:
        config, warning = choose(settings.sandbox, settings.isolation, settings.node,
                                 settings.repo_dir, base_config(settings))
    except SandboxError as exc:
        raise StartupError(f"--sandbox {settings.sandbox}: {exc}") from None
    uids = None
    if config.mode == "uid":
        uids = parse_uid_range(settings.sandbox_uids)
        if len(uids) < 2 * size:
            raise StartupError(f"--sandbox-uids {settings.sandbox_uids}: {len(uids)} uids are "
                               f"too few for {size} executors (two each)")
    return config.to_message(), uids, warning


def resolve_collections(settings: Any) -> Collections | None:
    """Collections for jobs that use ``collections.``; None when ``WORKER_COLLECTIONS_URL`` is unset.

    A dist-tag (``latest``) is resolved once, here, through the adaptor repo (its @latest cache
    or npm; offline, the highest version installed), which also installs that version if it is
    missing, as ws-worker resolves it at startup: every run of this worker then gets the same
    version instead of a lookup per run. If it cannot be resolved, the tag is kept (each run
    resolves it, and a run that cannot gets a clear adaptor error) and a warning says why:
    collections must not keep the runs that do not use them from being served.
    """
    if not settings.collections_url:
        return None
    version = settings.collections_version or "latest"
    if version in TAGS:
        repo = AdaptorRepo(settings.repo_dir, offline=settings.adaptors_offline,
                           install_timeout=settings.install_timeout,
                           latest_ttl=settings.latest_ttl,
                           allowlist=settings.adaptor_allowlist)
        try:
            version = repo.resolve(f"{COLLECTIONS_ADAPTOR}@{version}").version
        except AdaptorError as exc:
            settings.warnings.append(
                f"WORKER_COLLECTIONS_VERSION={version}: not resolved at startup ({exc}); each "
                "run that uses collections resolves it itself")
    return Collections(settings.collections_url, version)

