"""The benchmark's workloads, as Lightning plans the dev server accepts, and the slow HTTP
server the realistic mix talks to.

``trivial``: one language-common step that returns at once — the pool's own overhead.
``mix``: what a real instance sees, one run of each in turn: a language-http ``get`` against a
local server that answers in 50 ms, a two-step workflow, a 1 MB input dataclip, a job logging
100 lines. ``tune --workflow FILE...`` replaces the mix with the operator's own run files.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pool.devserver.plans import InvalidPlan, normalize_plan

COMMON = "@openfn/language-common@3.3.4"
HTTP = "@openfn/language-http@7.2.10"
ADAPTORS = (COMMON, HTTP)
HTTP_DELAY_S = 0.05
WORKLOADS = ("trivial", "mix")


@dataclass(frozen=True)
class RunSpec:
    """What ``DevServer.enqueue`` takes: a plan and the dataclips it names."""

    name: str
    plan: dict[str, Any]
    dataclips: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, Any] = field(default_factory=dict)


def chain(*jobs: dict[str, Any], dataclip_id: str | None = None) -> dict[str, Any]:
    """A Lightning plan running ``jobs`` one after the other, each on the previous success."""
    edges = [{"id": f"e{i}", "source_job_id": a["id"], "target_job_id": b["id"],
              "condition": "on_job_success", "enabled": True}
             for i, (a, b) in enumerate(itertools.pairwise(jobs))]
    plan: dict[str, Any] = {"jobs": list(jobs), "edges": edges, "triggers": []}
    if dataclip_id:
        plan["dataclip_id"] = dataclip_id
    return plan


def job(job_id: str, body: str, adaptor: str = COMMON) -> dict[str, Any]:
    return {"id": job_id, "name": job_id, "adaptor": adaptor, "body": body}


TRIVIAL = RunSpec("trivial", chain(job("a", "fn(state => ({ ...state, data: { ok: true } }))")))


def mix_specs(http_url: str) -> list[RunSpec]:
    """The four runs of the realistic mix; ``http_url`` is the slow server's base URL."""
    big = {"data": {"rows": ["x" * 1000] * 1000}}  # ~1 MB of JSON
    return [
        RunSpec("http-get", chain(job("get", f"get('{http_url}/patients');", HTTP))),
        RunSpec("two-step", chain(
            job("extract", "fn(state => ({ ...state, data: { n: 21 } }))"),
            job("load", "fn(state => ({ ...state, data: { n: state.data.n * 2 } }))"))),
        RunSpec("1mb-dataclip", chain(
            job("count", "fn(state => ({ data: { rows: state.data.rows.length } }))"),
            dataclip_id="bench-1mb"), {"bench-1mb": big}),
        RunSpec("100-log-lines", chain(job(
            "log", "fn(state => { for (let i = 0; i < 100; i++) console.log('line', i); "
                   "return state; })"))),
    ]


class RunFileError(ValueError):
    """A ``--workflow`` file cannot be benchmarked; the message names the file and why."""


def load_run_file(path: str) -> RunSpec:
    """A run file as ``make dev``'s ``examples/``: ``{"plan": <Lightning plan>,
    "credentials"?: {id: body}, "dataclips"?: {id: body}, "name"?}``, checked the way the dev
    server will check it, so a bad file fails before any measuring."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise RunFileError(f"cannot read workflow file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise RunFileError(f"workflow file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("plan"), dict):
        raise RunFileError(f"workflow file {path}: expected an object with a 'plan' (a Lightning "
                           f"plan: jobs, edges, triggers), as in examples/")
    spec = RunSpec(str(data.get("name") or path), data["plan"], data.get("dataclips") or {},
                   data.get("credentials") or {})
    try:
        normalize_plan(spec.plan, spec.credentials, spec.dataclips)
    except InvalidPlan as exc:
        raise RunFileError(f"workflow file {path}: {exc}") from None
    return spec


def specs(workload: str, http_url: str) -> Iterator[RunSpec]:
    """An endless stream of runs of ``workload`` (the mix cycles through its four)."""
    if workload == "trivial":
        return itertools.repeat(TRIVIAL)
    if workload == "mix":
        return itertools.cycle(mix_specs(http_url))
    raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")


class SlowHttpServer:
    """A loopback HTTP server answering every GET with a little JSON after ``delay_s``:
    a stand-in for the remote APIs jobs call, so runs wait on I/O as they do in production."""

    def __init__(self, delay_s: float = HTTP_DELAY_S) -> None:
        delay = delay_s

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                time.sleep(delay)
                body = json.dumps({"path": self.path, "ok": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                """Quiet: thousands of requests would drown the benchmark's table."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="bench-http")

    def __enter__(self) -> SlowHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
