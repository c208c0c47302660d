"""``poolctl start`` with ``WORKER_SEED_REPO`` (pool/seed_repo.py): a pool whose repo is an empty
folder (a fresh volume) copies the seed's adaptors in before its executors start, and runs a job
with one of them offline, in its default sandbox."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pool.adaptors import AdaptorRepo
from pool.devserver.server import DevServer
from tests.supervisor.conftest import COMMON, HELLO_BODY, REPO, job, plan, wait_run


def test_an_empty_repo_is_seeded_before_the_first_run(lightning: DevServer, start_pool) -> None:
    with tempfile.TemporaryDirectory(prefix="poolctl-seeded-") as root:
        os.chmod(root, 0o755)  # a root pool's slot uids must reach the repo
        repo = Path(root) / "repo"
        pool = start_pool("--size", "1", "--isolation", "strict",
                          env={"WORKER_REPO_DIR": str(repo), "WORKER_SEED_REPO": REPO})
        run = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
        assert run["state"] == "success", (run["error_message"], pool.output[-3000:])
        name, version = COMMON.rsplit("@", 1)
        assert AdaptorRepo(str(repo)).is_installed(name, version)
        assert f"seed repo {REPO}: copied " in pool.output
        assert pool.stop() == 0
