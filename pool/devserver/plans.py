"""Check a Lightning plan before it is enqueued, so a test's typo fails at enqueue, not mid-run.

The shape is that of Lightning's ``fetch:plan`` reply (reference §7.1 and the ``plan`` entries of
transcripts/cases.json). Ids may be of any form (real Lightning uses UUIDs, tests use names);
a node or edge without an id gets a UUID.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Mapping
from typing import Any

QUEUE_NAME = re.compile(r"^[a-zA-Z0-9_]+$")


class InvalidPlan(ValueError):
    """The plan (or its credentials, dataclips or queue) cannot be run; the message says why."""


def _require_str(obj: Mapping, key: str, where: str, optional: bool = False) -> None:
    value = obj.get(key)
    if value is None and optional:
        return
    if not isinstance(value, str) or (not value and not optional):
        raise InvalidPlan(f"{where}: {key!r} must be a non-empty string, got {value!r}")


def _list_of_objects(plan: Mapping, key: str) -> list[dict]:
    items = plan.get(key, [])
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InvalidPlan(f"plan: {key!r} must be a list of objects")
    return items


def _assign_id(item: dict, where: str) -> str:
    if "id" not in item or item["id"] is None:
        item["id"] = str(uuid.uuid4())
    _require_str(item, "id", where)
    return item["id"]


def validate_queue(queue: object) -> str:
    """A queue name is what ws-worker accepts in a workloop: letters, digits and ``_``."""
    if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
        raise InvalidPlan(f"queue must match [a-zA-Z0-9_]+, got {queue!r}")
    return queue


def normalize_plan(plan: object, credentials: Mapping[str, Any],
                   dataclips: Mapping[str, Any]) -> dict:
    """Return a checked deep copy of ``plan`` with missing ids filled in; raise ``InvalidPlan``.

    ``credentials`` and ``dataclips`` are every id the server knows (already stored plus those
    sent with this plan): a plan may only reference those.
    """
    if not isinstance(plan, dict):
        raise InvalidPlan(f"plan must be a JSON object, got {type(plan).__name__}")
    plan = copy.deepcopy(plan)
    triggers = _list_of_objects(plan, "triggers")
    jobs = _list_of_objects(plan, "jobs")
    edges = _list_of_objects(plan, "edges")
    if not jobs:
        raise InvalidPlan("plan: 'jobs' must list at least one job")
    plan["triggers"], plan["jobs"], plan["edges"] = triggers, jobs, edges

    trigger_ids = [_assign_id(t, f"trigger #{i}") for i, t in enumerate(triggers)]
    job_ids = []
    for i, job in enumerate(jobs):
        where = f"job #{i} ({job.get('id', 'no id')})"
        job_ids.append(_assign_id(job, where))
        _require_str(job, "body", where)
        _require_str(job, "adaptor", where)
        _require_str(job, "name", where, optional=True)
        credential_id = job.get("credential_id")
        if credential_id is not None and (not isinstance(credential_id, str)
                                          or credential_id not in credentials):
            raise InvalidPlan(f"{where}: credential_id {credential_id!r} is not a known "
                              f"credential (send it in 'credentials')")
    seen: set[str] = set()
    for node_id in trigger_ids + job_ids:
        if node_id in seen:
            raise InvalidPlan(f"plan: node id {node_id!r} is used twice")
        seen.add(node_id)

    for i, edge in enumerate(edges):
        where = f"edge #{i} ({edge.get('id', 'no id')})"
        _assign_id(edge, where)
        source_trigger, source_job = edge.get("source_trigger_id"), edge.get("source_job_id")
        if (source_trigger is None) == (source_job is None):
            raise InvalidPlan(f"{where}: needs exactly one of source_trigger_id, source_job_id")
        if source_trigger is not None and source_trigger not in trigger_ids:
            raise InvalidPlan(f"{where}: source_trigger_id {source_trigger!r} is not a trigger")
        if source_job is not None and source_job not in job_ids:
            raise InvalidPlan(f"{where}: source_job_id {source_job!r} is not a job")
        if edge.get("target_job_id") not in job_ids:
            raise InvalidPlan(f"{where}: target_job_id {edge.get('target_job_id')!r} is not a job")
        _require_str(edge, "condition", where, optional=True)
        if "enabled" in edge and not isinstance(edge["enabled"], bool):
            raise InvalidPlan(f"{where}: 'enabled' must be true or false")

    start = plan.get("starting_node_id")
    if start is not None and start not in seen:
        raise InvalidPlan(f"plan: starting_node_id {start!r} is not a trigger or job")
    dataclip_id = plan.get("dataclip_id")
    if dataclip_id is not None and (not isinstance(dataclip_id, str) or dataclip_id not in dataclips):
        raise InvalidPlan(f"plan: dataclip_id {dataclip_id!r} is not a known dataclip "
                          f"(send it in 'dataclips')")
    options = plan.get("options")
    if options is not None and not isinstance(options, dict):
        raise InvalidPlan("plan: 'options' must be an object")
    timeout_ms = (options or {}).get("run_timeout_ms")
    if timeout_ms is not None and (not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool)
                                   or timeout_ms <= 0):
        raise InvalidPlan(f"plan: options.run_timeout_ms must be a positive integer, "
                          f"got {timeout_ms!r}")
    _require_str(plan, "globals", "plan", optional=True)
    return plan
