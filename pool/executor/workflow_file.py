"""Load a workflow file in the OpenFn CLI's format into an execution plan for the shim.

Public API::

    class WorkflowFileError(Exception)     # one line naming the file and what is wrong
    def load_workflow(path) -> dict        # {"workflow": {...}, "options": {...}}: plan minus id
    def plan_adaptors(plan) -> list[str]   # every adaptor specifier the steps use

Accepted (as ``openfn`` the CLI accepts it): ``{"workflow": {"steps": [...]}, "options": {...}}``
or a bare ``{"steps": [...]}``. Each step may give ``expression`` inline or as a path to a
``.js`` file relative to the workflow file; ``adaptor`` (one) or ``adaptors`` (a list), where a
short name like ``common@3.3.4`` means ``@openfn/language-common@3.3.4``; ``configuration``
inline or as a path to a JSON file; ``next`` as a step id or ``{id: true | false | condition |
{condition, disabled}}``. ``options.start`` (or ``workflow.start``) picks the first step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class WorkflowFileError(Exception):
    """The workflow file (or a file it points at) cannot be read or is not a workflow."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkflowFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise WorkflowFileError(f"{what} {path} is not valid JSON: {exc}") from None


def _is_path(value: str, suffixes: tuple[str, ...]) -> bool:
    """The CLI's rule: a one-line string ending in a file suffix is a path, not code."""
    return "\n" not in value and value.strip().endswith(suffixes)


def expand_adaptor(spec: str) -> str:
    """``common@1.0.0`` → ``@openfn/language-common@1.0.0``; full names are kept."""
    spec = spec.strip()
    return spec if spec.startswith("@") else f"@openfn/language-{spec}"


def _load_step(raw: Any, index: int, base: Path, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise WorkflowFileError(f"{where}: step {index + 1} is not an object")
    step = dict(raw)
    step.setdefault("id", f"job-{index + 1}")
    label = f"{where}: step {step['id']}"
    expression = step.get("expression")
    if expression is not None:
        if not isinstance(expression, str):
            raise WorkflowFileError(f"{label}: expression must be a string")
        if _is_path(expression, (".js", ".ojs")):
            path = base / expression.strip()
            try:
                step["expression"] = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise WorkflowFileError(f"{label}: cannot read {path}: {exc.strerror}") from None
    adaptors = step.pop("adaptors", None)
    single = step.pop("adaptor", None)
    if single is not None:
        adaptors = [single] + list(adaptors or [])
    if adaptors is not None:
        if not isinstance(adaptors, list) or not all(isinstance(a, str) for a in adaptors):
            raise WorkflowFileError(f"{label}: adaptors must be a list of strings")
        step["adaptors"] = [expand_adaptor(a) for a in adaptors]
    configuration = step.get("configuration")
    if isinstance(configuration, str):
        step["configuration"] = _read_json(base / configuration, f"{label}: configuration")
    elif configuration is not None and not isinstance(configuration, dict):
        raise WorkflowFileError(f"{label}: configuration must be an object or a file path")
    nxt = step.get("next")
    if nxt is not None and not isinstance(nxt, str | dict):
        raise WorkflowFileError(f"{label}: next must be a step id or an object")
    return step


def load_workflow(path: str) -> dict[str, Any]:
    """The plan (``workflow`` and ``options``) described by the file at ``path``."""
    file = Path(path)
    data = _read_json(file, "workflow file")
    if not isinstance(data, dict):
        raise WorkflowFileError(f"workflow file {file} must hold a JSON object")
    workflow = data.get("workflow", data)
    if not isinstance(workflow, dict) or not isinstance(workflow.get("steps"), list):
        raise WorkflowFileError(f"workflow file {file} has no steps: expected "
                                "{\"workflow\": {\"steps\": [...]}} or {\"steps\": [...]}")
    if not workflow["steps"]:
        raise WorkflowFileError(f"workflow file {file} has an empty steps list")
    base = file.parent
    steps = [_load_step(raw, i, base, str(file)) for i, raw in enumerate(workflow["steps"])]
    options = data.get("options") if "workflow" in data else None
    options = dict(options) if isinstance(options, dict) else {}
    if "start" not in options and isinstance(workflow.get("start"), str):
        options["start"] = workflow["start"]
    out_workflow = {k: v for k, v in workflow.items() if k in ("id", "name", "globals",
                                                                 "credentials")}
    out_workflow["steps"] = steps
    return {"workflow": out_workflow, "options": options}


def plan_adaptors(plan: dict[str, Any]) -> list[str]:
    """Every adaptor specifier used by the plan's steps, in order, once each."""
    found: dict[str, None] = {}
    for step in plan["workflow"]["steps"]:
        for spec in step.get("adaptors") or []:
            found.setdefault(spec, None)
    return list(found)
