"""strict vs context against hostile jobs, and what a job's environment holds.

The hostile run sets a global, makes a lodash mixin through language-common's ``_``, leaves an
interval timer printing, writes ``process.env`` and a host-realm global. The observer run that
follows on the same executor reports what it can see. ``strict`` must show nothing; ``context``
shows only its documented leaks (pool/executor/isolation.py): the adaptor dependency's mixin and
changes to the host realm (``process.env``, host globals).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.executor.conftest import executor, run

HOSTILE = """
fn(state => {
  const host = setTimeout.constructor('return this')();
  globalThis.leakedGlobal = 'global';
  _.mixin({ leakedMixin: () => 'mixin' });
  host.process.env.LEAKED_ENV = 'env';
  host.leakedHostGlobal = 'host';
  setInterval(() => console.log('interval from the hostile run'), 20);
  return state;
});
"""

OBSERVER = """
fn(async state => {
  await new Promise(resolve => setTimeout(resolve, 200));
  const host = setTimeout.constructor('return this')();
  return { data: {
    global: typeof globalThis.leakedGlobal,
    mixin: typeof _.leakedMixin,
    env: host.process.env.LEAKED_ENV ?? null,
    host: host.leakedHostGlobal ?? null,
    secret: host.process.env.WORKER_SECRET ?? null,
    envNames: Object.keys(host.process.env).sort(),
  } };
});
"""


def observe(isolation: str, **init: Any) -> tuple[dict, list[str]]:
    with executor(isolation, **init) as handle:
        hostile = run(handle, HOSTILE)
        assert hostile.complete["reason"] == "success", hostile.complete
        observer = run(handle, OBSERVER)
        assert observer.complete["reason"] == "success", observer.complete
        return json.loads(observer.complete["final_state"])["data"], observer.logs()


@pytest.mark.parametrize("isolation", ["strict", "cold"])
def test_nothing_of_a_hostile_run_reaches_the_next_run(isolation):
    seen, logs = observe(isolation)
    assert seen["global"] == "undefined"
    assert seen["mixin"] == "undefined"
    assert seen["env"] is None and seen["host"] is None
    assert not any("interval from the hostile run" in line for line in logs)


def test_context_mode_leaks_only_what_it_documents():
    # with plain adaptors (a prepared one is a single file, dependencies included, fresh per
    # run: test_prepared.py)
    seen, logs = observe("context", prepare=False)
    # kept apart: the job's own globals and its timers
    assert seen["global"] == "undefined"
    assert not any("interval from the hostile run" in line for line in logs)
    # documented leaks: an adaptor dependency's module state and the host realm
    assert seen["mixin"] == "function"
    assert seen["env"] == "env" and seen["host"] == "host"


def test_jobs_never_see_worker_variables_and_get_a_minimal_env():
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root",
           "WORKER_SECRET": "do-not-leak", "WORKER_RUNS_PRIVATE_KEY": "nor-this",
           "AWS_SECRET_ACCESS_KEY": "nor-this", "HTTPS_PROXY": "http://proxy.invalid:3128",
           "TZ": "UTC", "EXTRA_FOR_JOBS": "yes"}
    with executor("strict", env=env, env_allowlist=["EXTRA_FOR_JOBS", "WORKER_SECRET"]) as h:
        result = run(h, OBSERVER)
    seen = json.loads(result.complete["final_state"])["data"]
    assert seen["secret"] is None
    assert not any(name.startswith("WORKER_") for name in seen["envNames"])
    assert "AWS_SECRET_ACCESS_KEY" not in seen["envNames"]
    assert {"HTTPS_PROXY", "TZ", "EXTRA_FOR_JOBS", "PATH", "HOME"} <= set(seen["envNames"])


def test_the_executor_process_itself_has_no_worker_secret():
    import psutil

    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "WORKER_SECRET": "do-not-leak"}
    with executor("noop", env=env) as handle:
        assert "WORKER_SECRET" not in psutil.Process(handle.pid).environ()
