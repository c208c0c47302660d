"""``bench`` and ``tune`` read the pool's PSS when they are not root, although supervisor and
executors are not dumpable (pool/undumpable.py): measured for real, as an unprivileged user."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.unprivileged import unprivileged

ROOT = Path(__file__).resolve().parents[2]
REPO = os.environ.get("WORKER_REPO_DIR") or str(ROOT / ".repo")
DEADLINE_S = 300

MEASURE = """
import dataclasses, json, sys, tempfile
from pool.bench.measure import BenchError, Cell, measure
from pool.devserver.server import DevServer
with DevServer(record_frames=False) as server:
    try:
        m = measure(server, Cell("context", 1, runs=6, budget_s=3.0), sys.argv[1], "http://x",
                    extra=["--offline"], log_dir=tempfile.mkdtemp())
    except BenchError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        print(json.dumps(dataclasses.asdict(m)))
"""


def test_an_unprivileged_benchmark_reads_the_pss_of_a_pool_that_is_not_dumpable() -> None:
    user = unprivileged()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    done = subprocess.run([user.python, "-c", MEASURE, REPO], env=user.env(env), cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE_S, check=False,
                          **user.popen)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in figures, figures
    assert figures["runs"] >= 1 and figures["failures"] == 0
    # a Python supervisor is tens of MB; an executor with its Node shim more than that
    assert figures["supervisor_pss_mb"] > 5, figures
    assert figures["executors_pss_mb"] > 20, figures
