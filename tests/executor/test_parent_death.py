"""An executor and its shims never outlive the process that started them, even on SIGKILL.

A shim spinning in a job's busy loop cannot notice its socket closing, so this is the case
that matters: the parent is SIGKILLed mid-run and nothing of the pool may be left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from tests.executor.conftest import DEADLINE, REPO, init, plan, requires_repo

PARENT = textwrap.dedent("""
    import json, sys
    from pool.executor.handle import ExecutorHandle
    init, run = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    handle = ExecutorHandle.spawn(init)
    handle.wait_ready(60)
    handle.run(run["id"], run, {}, {"timeout_ms": 600000, "memory_mb": 128,
               "payload_mb": 10, "log_payload_mb": 1}, {})
    while True:
        message = handle.recv(60)
        if message and message["type"] == "step-start":
            print(json.dumps({"executor": handle.pid}), flush=True)
""")


def test_sigkill_of_the_parent_leaves_no_executor_and_no_spinning_shim() -> None:
    requires_repo()
    busy = plan("fn(s => { while (true) {} })")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, json.dumps(init("context")), json.dumps(busy)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "WORKER_REPO_DIR": REPO})
    try:
        line = parent.stdout.readline()  # the job is now spinning
        executor = psutil.Process(json.loads(line)["executor"])
        pool = [executor, *executor.children(recursive=True)]
        assert any("node" in p.name() for p in pool), "the shim should be running"
        parent.send_signal(signal.SIGKILL)
        parent.wait(DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and any(p.is_running() and
                                                  p.status() != psutil.STATUS_ZOMBIE
                                                  for p in pool):
            time.sleep(0.1)
        left = [p.pid for p in pool if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"processes of the pool outlived their parent: {left}"
    finally:
        if parent.poll() is None:
            parent.kill()
