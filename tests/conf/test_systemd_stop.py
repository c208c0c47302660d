"""``systemctl stop`` as conf/poolctl.service configures it, acted out on a real pool: systemd
sends SIGTERM to the processes its KillMode= names, and a run in progress must still finish.

The default KillMode=control-group signals every process of the unit at once: executors take
their shims down on SIGTERM, so the run in progress crashed (the unit before this one).
"""

from __future__ import annotations

import re
import signal

import psutil

from pool.devserver.server import DevServer
from tests.conf.manifests import CONF
from tests.supervisor.conftest import COMMON, DEADLINE, plan, wait_run, wait_until

THREE_SECONDS = "fn(state => new Promise(resolve => setTimeout(() => resolve(state), 3000)));"


def kill_mode() -> str:
    found = re.findall(r"^KillMode=(\S+)", (CONF / "poolctl.service").read_text(), re.MULTILINE)
    return found[-1] if found else "control-group"  # systemd's default


def test_systemctl_stop_lets_the_run_in_progress_finish(lightning: DevServer,
                                                        start_pool) -> None:
    pool = start_pool("--size", "1")
    run_id = lightning.enqueue(plan({"id": "job-1", "adaptor": COMMON, "body": THREE_SECONDS}))
    wait_until(lambda: any(e["event"] == "run:start" for e in lightning.run(run_id)["events"]),
               "the run to start")
    main = psutil.Process(pool.proc.pid)
    mode = kill_mode()
    signalled = {"control-group": [main, *main.children(recursive=True)],
                 "mixed": [main], "process": [main]}[mode]
    for process in signalled:
        process.send_signal(signal.SIGTERM)
    assert pool.proc.wait(DEADLINE) == 0
    run = wait_run(lightning, run_id)
    assert (run["state"], run["reason"]) == ("success", "success"), (mode, run["reason"])
