"""``poolctl execute workflow.json [--input state.json]``: one workflow, one executor, no Lightning.

Public API::

    def execute_command(workflow_path, input_path, settings) -> int

Prints the final state as JSON on stdout and every log line on stderr (``LEVEL SOURCE
message``). Exit codes: 0 when the run's reason is ``success``; 1 for any other reason, after a
``<reason>: <error_type>: <message>`` line; 2 for bad input (an unreadable or invalid workflow
or input file), with a one-line message; 3 when the executor cannot boot (no Node, ...).

The run goes through a real executor process started exactly as the supervisor starts one
(``pool.executor.oneshot``), in the ``--isolation`` mode chosen, with the same limits settings
as Lightning runs: its reason is computed by the same code as a Lightning run's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pool.executor.oneshot import ExecutorBootError, execute_once
from pool.executor.sandbox import SandboxError, base_config, choose
from pool.executor.workflow_file import WorkflowFileError, load_workflow

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


def execute_command(workflow_path: str, input_path: str | None, settings: Any) -> int:
    """Run the workflow file through an executor; see the module doc for output and exit codes."""
    try:
        plan = load_workflow(workflow_path)
        state = read_input(input_path)
    except WorkflowFileError as exc:
        say(f"poolctl execute: {exc}")
        return 2
    try:
        sandbox, warning = choose(settings.sandbox, settings.isolation, settings.node,
                                  settings.repo_dir, base_config(settings))
    except SandboxError as exc:
        say(f"poolctl execute: --sandbox {settings.sandbox}: {exc}")
        return 2
    if warning:
        say(f"poolctl execute: {warning}")
    min_level = LEVELS.get(str(settings.log_level).lower(), 1)

    def print_log(event: dict[str, Any]) -> None:
        if event["type"] == "log" and LEVELS.get(event.get("level", "info"), 1) >= min_level:
            say(f"{event.get('level', 'info').upper()} {event.get('source')} "
                f"{format_message(event.get('message'))}")

    try:
        end = execute_once(plan, state, settings, on_event=print_log,
                           sandbox=sandbox.to_message())
    except ExecutorBootError as exc:
        say(f"poolctl execute: the executor could not start: {exc}")
        return 3
    return report_end(end.get("reason", "crash"), end.get("error_type"),
                      end.get("error_message"), end.get("final_state"))


def report_end(reason: str, error_type: str | None, error_message: str | None,
               final_state: str | None) -> int:
    """Print the final state (if any) on stdout and, unless success, the reason line."""
    if final_state is not None:
        print(json.dumps(json.loads(final_state), indent=2))
    if reason == "success":
        return 0
    say(f"{reason}: {error_type}: {error_message}")
    return 1
