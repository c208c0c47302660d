"""``poolctl execute workflow.json [--input state.json]``: one workflow, one shim, no Lightning.

Public API::

    def execute_command(workflow_path, input_path, settings) -> int

Prints the final state as JSON on stdout and every log line on stderr (``LEVEL SOURCE
message``). Exit codes: 0 when the run's reason is ``success``; 1 for any other reason, after a
``<reason>: <error_type>: <message>`` line; 2 for bad input (an unreadable or invalid workflow
or input file), with a one-line message.

The run's limits come from the same settings as Lightning runs (timeout, memory, payload), and
the outcomes of a dead shim match the executor's: a timeout is ``kill``/``TimeoutError``, heap
exhaustion ``kill``/``OOMError``, any other exit ``crash``/``ExitError``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from typing import Any

from pool.adaptors import AdaptorError, AdaptorRepo
from pool.executor.environment import shim_env
from pool.executor.shim import Shim, ShimBootError, ShimExited
from pool.executor.workflow_file import WorkflowFileError, load_workflow, plan_adaptors

BOOT_TIMEOUT = 60.0
LEVELS = {"debug": 0, "info": 1, "success": 1, "always": 2, "warn": 2, "error": 3}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_message(message: Any) -> str:
    """A log message list as one line: strings as they are, other values as compact JSON."""
    parts = message if isinstance(message, list) else [message]
    text = " ".join(p if isinstance(p, str) else json.dumps(p, separators=(",", ":"))
                    for p in parts)
    return text.replace("\n", "\\n")


def read_input(input_path: str | None) -> Any:
    if input_path is None:
        return {}
    try:
        with open(input_path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise WorkflowFileError(f"cannot read input {input_path}: {exc.strerror}") from None
    except ValueError as exc:
        raise WorkflowFileError(f"input {input_path} is not valid JSON: {exc}") from None


def run_options(settings: Any, run_id: str) -> dict[str, Any]:
    return {
        "state_props_to_remove": list(settings.state_props_to_remove),
        "job_log_level": "debug",
        "sanitize": "none",
        "payload_limit_mb": settings.payload_mb,
        "log_payload_limit_mb": settings.log_payload_mb,
        "state_limit_mb": settings.run_memory_mb * 0.25,
        "cache_key": run_id,
    }


def execute_command(workflow_path: str, input_path: str | None, settings: Any) -> int:
    """Run the workflow file; see the module doc for output and exit codes."""
    try:
        plan = load_workflow(workflow_path)
        state = read_input(input_path)
    except WorkflowFileError as exc:
        say(f"poolctl execute: {exc}")
        return 2
    min_level = LEVELS.get(str(settings.log_level).lower(), 1)
    repo = AdaptorRepo(settings.repo_dir, offline=settings.adaptors_offline,
                       install_timeout=settings.install_timeout, latest_ttl=settings.latest_ttl)
    try:
        adaptors = repo.ensure(plan_adaptors(plan))
    except AdaptorError as exc:
        return report_end("exception", "AutoinstallError", str(exc), None)
    run_id = str(uuid.uuid4())
    message = {
        "run_id": run_id,
        "plan": {"id": run_id, **plan},
        "input": state,
        "adaptors": {spec: {"name": a.name, "version": a.version, "path": a.path}
                     for spec, a in adaptors.items()},
        "options": run_options(settings, run_id),
    }
    with tempfile.TemporaryDirectory(prefix="poolctl-shim-home-") as home:
        env = shim_env(os.environ, settings.env_allowlist, home)
        shim = Shim(settings.node, settings.run_memory_mb, env, str(repo.repo_dir))
        try:
            shim.start()
            shim.wait_ready(BOOT_TIMEOUT)
        except ShimBootError as exc:
            shim.kill()
            shim.close()
            say(f"poolctl execute: cannot start the Node shim: {exc}")
            return 1
        try:
            return drive(shim, message, settings.max_run_duration, min_level)
        finally:
            shim.close()


def drive(shim: Shim, message: dict[str, Any], timeout_s: float, min_level: int) -> int:
    """Send the run, print its events until it completes, the shim dies or time runs out."""
    shim.start_run(message)
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            shim.kill()
            return report_end("kill", "TimeoutError",
                              f"Workflow failed to return within {int(timeout_s * 1000)}ms", None)
        try:
            event = shim.next_event(remaining)
        except ShimExited as exc:
            if exc.oom:
                return report_end("kill", "OOMError", "Run exceeded maximum memory usage", None)
            return report_end("crash", "ExitError",
                              f"Process exited with code: {exc.returncode}", None)
        if event is None:
            continue
        kind = event["type"]
        if kind == "log":
            if LEVELS.get(event.get("level", "info"), 1) >= min_level:
                say(f"{event.get('level', 'info').upper()} {event.get('source')} "
                    f"{format_message(event.get('message'))}")
        elif kind == "output":
            say(f"INFO ADA {event['line']}")
        elif kind == "run-complete":
            return report_end(event.get("reason", "crash"), event.get("error_type"),
                              event.get("error_message"), event.get("final_state"))


def report_end(reason: str, error_type: str | None, error_message: str | None,
               final_state: str | None) -> int:
    """Print the final state (if any) on stdout and, unless success, the reason line."""
    if final_state is not None:
        print(json.dumps(json.loads(final_state), indent=2))
    if reason == "success":
        return 0
    say(f"{reason}: {error_type}: {error_message}")
    return 1
