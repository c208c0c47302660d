"""Lightning plan → the execution plan, limits and options an executor runs (reference §7.2).

Lightning describes a run as triggers, jobs and edges; @openfn/runtime wants steps linked by
``next``. The conversion follows ws-worker so a run behaves the same on either worker:
triggers first then jobs, disabled trigger edges dropped, disabled job edges kept but marked,
a missing or ``null`` condition meaning "always". Credentials are only collected here (the
caller fetches them, in parallel, then calls :func:`attach_credentials`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from pool.settings import default_of

COLLECTIONS_ADAPTOR = "@openfn/language-collections"
JOB_LOG_LEVELS = ("none", "debug", "info", "default", "warn", "error", "success", "always")
SANITIZE_MODES = ("none", "remove", "summarize", "obfuscate")


class PlanError(ValueError):
    """The plan Lightning sent cannot be run; the message says which part is malformed."""


@dataclass(frozen=True)
class RunDefaults:
    """The worker's own limits, used when the plan's options do not set them."""

    timeout_ms: int = int(default_of("max_run_duration") * 1000)
    memory_mb: int = default_of("run_memory_mb")
    payload_mb: float = default_of("payload_mb")
    log_payload_mb: float = default_of("log_payload_mb")
    state_props_to_remove: tuple[str, ...] = tuple(default_of("state_props_to_remove"))

    @classmethod
    def from_settings(cls, settings: Any) -> RunDefaults:
        """From ``pool.settings`` values (``max_run_duration`` is in seconds there)."""
        return cls(
            timeout_ms=int(float(settings.max_run_duration) * 1000),
            memory_mb=int(settings.run_memory_mb),
            payload_mb=float(settings.payload_mb),
            log_payload_mb=float(settings.log_payload_mb),
            state_props_to_remove=tuple(settings.state_props_to_remove),
        )


@dataclass(frozen=True)
class Collections:
    """Where jobs using ``collections.`` talk to, and which adaptor version they get."""

    url: str
    version: str


@dataclass
class ConvertedPlan:
    """Everything the executor's ``run`` message needs, plus what must be fetched first."""

    plan: dict[str, Any]
    limits: dict[str, Any]
    options: dict[str, Any]
    output_dataclips: bool
    dataclip_id: str | None
    credential_ids: list[str] = field(default_factory=list)


def convert_plan(
    lightning_plan: Any,
    defaults: RunDefaults,
    run_id: str | None = None,
    run_token: str | None = None,
    collections: Collections | None = None,
) -> ConvertedPlan:
    """Convert a ``fetch:plan`` reply; raises PlanError when its shape is wrong."""
    if not isinstance(lightning_plan, dict):
        raise PlanError(f"plan is not an object but {type(lightning_plan).__name__}")
    triggers = _list_of_objects(lightning_plan, "triggers")
    jobs = _list_of_objects(lightning_plan, "jobs")
    edges = _list_of_objects(lightning_plan, "edges")
    if not jobs:
        raise PlanError("plan has no jobs")

    steps = [_trigger_step(t, edges) for t in triggers]
    steps += [_job_step(j, edges) for j in jobs]

    workflow: dict[str, Any] = {"steps": steps}
    if isinstance(lightning_plan.get("name"), str):
        workflow["name"] = lightning_plan["name"]
    if isinstance(lightning_plan.get("globals"), str):
        workflow["globals"] = lightning_plan["globals"]
    if collections is not None:
        _add_collections(workflow, collections, run_token, lightning_plan.get("project_id"))

    start = lightning_plan.get("starting_node_id") or steps[0]["id"]
    plan = {
        "id": lightning_plan.get("id") or run_id or str(uuid.uuid4()),
        "workflow": workflow,
        "options": {"start": start},
    }
    run_options = lightning_plan.get("options") or {}
    if not isinstance(run_options, dict):
        raise PlanError("plan options is not an object")
    limits, options, output_dataclips = _run_options(run_options, defaults)
    dataclip_id = lightning_plan.get("dataclip_id") or None
    credential_ids = []
    for step in steps:
        cred = step.get("configuration")
        if isinstance(cred, str) and cred not in credential_ids:
            credential_ids.append(cred)
    return ConvertedPlan(plan, limits, options, output_dataclips, dataclip_id, credential_ids)


def attach_credentials(plan: dict[str, Any], credentials: dict[str, Any]) -> dict[str, Any]:
    """Replace each step's credential id by the fetched body (``None`` becomes ``{}``)."""
    for step in plan["workflow"]["steps"]:
        cred = step.get("configuration")
        if isinstance(cred, str):
            if cred not in credentials:
                raise PlanError(f"credential {cred} of step {step['id']} was not fetched")
            step["configuration"] = credentials[cred] if credentials[cred] is not None else {}
    return plan


def _list_of_objects(plan: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = plan.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PlanError(f"plan {key} must be a list of objects")
    return value


def _trigger_step(trigger: dict[str, Any], edges: list[dict[str, Any]]) -> dict[str, Any]:
    trigger_id = trigger.get("id") or "trigger"
    nxt: dict[str, Any] = {}
    for edge in edges:
        if edge.get("source_trigger_id") != trigger_id or edge.get("enabled") is False:
            continue
        condition = edge.get("condition")
        # null is treated as "always": passing it on would make the runtime refuse the plan
        nxt[_target(edge)] = True if condition in (None, "always") else condition
    return {"id": trigger_id, "next": nxt}


def _job_step(job: dict[str, Any], edges: list[dict[str, Any]]) -> dict[str, Any]:
    job_id = job.get("id") or str(uuid.uuid4())
    body = job.get("body")
    if not isinstance(body, str):
        raise PlanError(f"job {job_id} has no body (its code)")
    adaptor = job.get("adaptor")
    if adaptor is not None and not isinstance(adaptor, str):
        raise PlanError(f"job {job_id}: adaptor must be a string like '@openfn/language-http@7'")
    step: dict[str, Any] = {"id": job_id}
    if job.get("name"):
        step["name"] = job["name"]
    step["expression"] = body
    step["adaptors"] = [adaptor] if adaptor else []
    credential = job.get("credential") or job.get("credential_id")
    step["configuration"] = credential if credential is not None else {}
    if "state" in job:
        step["state"] = job["state"]
    nxt: dict[str, Any] = {}
    for edge in edges:
        if edge.get("source_job_id") != job_id:
            continue
        condition = edge.get("condition")
        enabled = edge.get("enabled") is not False
        if not condition and enabled:
            nxt[_target(edge)] = True
            continue
        link: dict[str, Any] = {}
        if condition:
            link["condition"] = condition
        if not enabled:
            link["disabled"] = True
        nxt[_target(edge)] = link
    step["next"] = nxt
    return step


def _target(edge: dict[str, Any]) -> str:
    target = edge.get("target_job_id")
    if not isinstance(target, str) or not target:
        raise PlanError(f"edge {edge.get('id', '?')} has no target_job_id")
    return target


def _add_collections(
    workflow: dict[str, Any], collections: Collections, run_token: str | None, project_id: Any
) -> None:
    """Give jobs that use ``collections.`` the adaptor and the run-scoped token.

    Only then: the run token must reach no job that does not need it (DESIGN, secrets).
    """
    used = False
    for step in workflow["steps"]:
        if "collections." not in step.get("expression", ""):
            continue
        used = True
        if not any(a.startswith(COLLECTIONS_ADAPTOR + "@") or a == COLLECTIONS_ADAPTOR
                   for a in step["adaptors"]):
            step["adaptors"].append(f"{COLLECTIONS_ADAPTOR}@{collections.version}")
    if used:
        workflow["credentials"] = {
            "collections_token": run_token,
            "collections_endpoint": collections.url,
            "project_id": project_id,
        }


def _number(options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PlanError(f"plan option {key} must be a non-negative number, got {value!r}")
    return value


def _run_options(
    run_options: dict[str, Any], defaults: RunDefaults
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    timeout = _number(run_options, "run_timeout_ms")
    memory = _number(run_options, "run_memory_limit_mb")
    payload = _number(run_options, "payload_limit_mb")
    log_payload = _number(run_options, "log_payload_limit_mb")
    limits = {
        "timeout_ms": int(timeout) if timeout is not None else defaults.timeout_ms,
        "memory_mb": int(memory) if memory is not None else defaults.memory_mb,
        "payload_mb": payload if payload is not None else defaults.payload_mb,
        "log_payload_mb": log_payload if log_payload is not None else defaults.log_payload_mb,
    }
    options: dict[str, Any] = {"state_props_to_remove": list(defaults.state_props_to_remove)}
    level = run_options.get("job_log_level")
    if level is not None:
        if level not in JOB_LOG_LEVELS:
            raise PlanError(f"plan option job_log_level {level!r} is not one of {JOB_LOG_LEVELS}")
        options["job_log_level"] = level
    sanitize = run_options.get("sanitize")
    if sanitize is not None:
        if sanitize not in SANITIZE_MODES:
            raise PlanError(f"plan option sanitize {sanitize!r} is not one of {SANITIZE_MODES}")
        options["sanitize"] = sanitize
    output_dataclips = run_options.get("output_dataclips")
    if output_dataclips is not None and not isinstance(output_dataclips, bool):
        raise PlanError(f"plan option output_dataclips must be true or false, got "
                        f"{output_dataclips!r}")
    return limits, options, output_dataclips is not False
