"""Prepared adaptors through real executors: off the run's path, used once made, a fresh module
per ``context`` run, never in ``cold``, off with the setting; Node's compile cache (Node 24)
hit from inside a shim and never written by one.

Each test has a fresh repo linked to the checkout's adaptors (tests/linked_repo.py), so the
preparing happens while it watches.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pool.adaptors import AdaptorRepo
from pool.bench.shim_run import measure_shim
from pool.executor.sandbox import SandboxConfig, shim_uid
from pool.executor.shim import node_flags
from pool.prepare import CACHE_DIR, PREPARED, CompileCache, PreparedRepo, PreparedShim
from tests.executor.conftest import COMMON, DEADLINE, SANDBOX, executor, run
from tests.linked_repo import copied_repo, linked_repo, node24

# Unsandboxed executors for the tests of preparing itself: the linked repo's packages are
# symlinks into the checkout's repo, which a shim's sandbox does not bind. The compile cache is
# tested in the default sandbox (on a repo of hard links), since that is where it must hit.
NO_SANDBOX = {"mode": "none"}

# where the adaptor's own code lives, from the stack of a call it makes into the job
WHERE = """
fn(state => {
  const frame = new Error('where').stack.split('\\n')
    .find(line => line.includes('/.prepared/') || line.includes('/language-common'));
  const host = setTimeout.constructor('return this')();
  return { data: {
    where: frame && frame.includes('/.prepared/') ? 'prepared' : 'plain',
    cache: host.process.env.NODE_COMPILE_CACHE ?? null,
  } };
});
"""
# writes module state into the adaptor and into one of its bundled dependencies (lodash)
WRITER = "fn(state => { fn.leaked = 'yes'; _.leakedMixin = () => 1; return state; });"
READER = ("fn(state => ({ data: { fn: typeof fn.leaked, mixin: typeof _.leakedMixin, "
          "at: new Error('x').stack.includes('/.prepared/') } }));")


def data(result: Any) -> dict[str, Any]:
    assert result.complete["reason"] == "success", result.complete
    return json.loads(result.complete["final_state"])["data"]


def wait_prepared(repo: AdaptorRepo, spec: str = COMMON) -> None:
    prepared = PreparedRepo(repo)
    adaptor = repo.resolve(spec)
    deadline = time.monotonic() + DEADLINE
    while prepared.state(adaptor) != PREPARED:
        assert time.monotonic() < deadline, f"{spec} was not prepared within {DEADLINE}s"
        time.sleep(0.2)


def wait_shim(repo: AdaptorRepo) -> str:
    shim = PreparedShim(repo)
    deadline = time.monotonic() + DEADLINE
    while shim.stamp() is None:
        assert time.monotonic() < deadline, f"the shim was not prepared within {DEADLINE}s"
        time.sleep(0.2)
    script = shim.script()
    assert script is not None, shim.stamp()  # it was checked and is used
    return script


ARGV = ("fn(state => ({ data: { script: setTimeout.constructor('return process')().argv[1] } "
        "}));")


def test_shims_boot_from_the_pools_bundle_of_the_shim_and_still_load_plain_adaptors(tmp_path):
    repo = AdaptorRepo(str(linked_repo(tmp_path / "repo")), offline=True)
    with executor("strict", sandbox=NO_SANDBOX, repo_dir=str(repo.repo_dir), prewarm=[]) as handle:
        first = data(run(handle, ARGV))["script"]
        script = wait_shim(repo)
        data(run(handle, ARGV))  # its standby may have booted before the bundle was there
        # language-http was never used: it is loaded plain (through the runtime's ESM hook)
        http = data(run(handle, ARGV, adaptors=["@openfn/language-http@7.2.10"]))["script"]
    assert first.endswith("pool/shim/shim.mjs")
    assert http == script and "/.prepared/.shim/" in script


def test_a_strict_run_never_waits_for_preparing_and_later_runs_use_the_prepared_form(tmp_path):
    repo = AdaptorRepo(str(linked_repo(tmp_path / "repo")), offline=True)
    with executor("strict", sandbox=NO_SANDBOX, repo_dir=str(repo.repo_dir), prewarm=[]) as handle:
        assert data(run(handle, WHERE))["where"] == "plain"  # the first run: the package
        wait_prepared(repo)
        wheres = [data(run(handle, WHERE))["where"] for _ in range(2)]
    assert wheres[-1] == "prepared", wheres
    folder = PreparedRepo(repo).folder(repo.resolve(COMMON))
    assert json.loads((folder / "package.json").read_text())["exports"] == "./adaptor.mjs"
    assert not list(folder.parent.glob(".tmp-*"))


def test_context_runs_each_get_a_fresh_prepared_adaptor_with_its_dependencies(tmp_path):
    repo = AdaptorRepo(str(linked_repo(tmp_path / "repo")), offline=True)
    with executor("context", sandbox=NO_SANDBOX, repo_dir=str(repo.repo_dir)) as handle:
        wait_prepared(repo)
        data(run(handle, WRITER))
        seen = data(run(handle, READER))
    assert seen["at"] is True  # the reader ran on the prepared form...
    assert seen == {"fn": "undefined", "mixin": "undefined", "at": True}  # ...and saw nothing


def test_cold_keeps_the_plain_package_and_no_compile_cache_even_when_prepared(tmp_path):
    repo = AdaptorRepo(str(linked_repo(tmp_path / "repo")), offline=True)
    assert PreparedRepo(repo).prepare(repo.resolve(COMMON), "node", print) == PREPARED
    with executor("cold", sandbox=NO_SANDBOX, repo_dir=str(repo.repo_dir), prewarm=[]) as handle:
        seen = data(run(handle, WHERE))
    assert seen == {"where": "plain", "cache": None}


def test_preparing_off_keeps_every_adaptor_plain(tmp_path):
    repo = AdaptorRepo(str(linked_repo(tmp_path / "repo")), offline=True)
    with executor("strict", sandbox=NO_SANDBOX, repo_dir=str(repo.repo_dir), prepare=False) as handle:
        wheres = [data(run(handle, WHERE))["where"] for _ in range(3)]
        time.sleep(2)  # what a background preparer would have had time to start
    assert wheres == ["plain"] * 3
    assert not (repo.repo_dir / ".prepared").exists()
    assert not (repo.repo_dir / CACHE_DIR).exists()


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder other users can reach (pytest's own is 0700): uid mode's slot uids bind it."""
    folder = Path(tempfile.mkdtemp(prefix="poolctl-test-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_compile_cache_is_built_by_the_pool_hit_by_shims_and_never_written_by_them(shared_tmp):
    """In the default sandbox (as root: slot uids, two per slot), where every shim must hit
    the one cache the pool built."""
    node = node24()
    repo = AdaptorRepo(str(copied_repo(shared_tmp / "repo")), offline=True)
    memory_mb = 128  # the executor fixture's run memory: the shims' --max-old-space-size
    uid = shim_uid(SANDBOX["mode"])
    with executor("strict", node=node, repo_dir=str(repo.repo_dir)) as handle:
        wait_prepared(repo)
        script = wait_shim(repo)
        cache = CompileCache(repo, node, node_flags(memory_mb), script, uid)
        deadline = time.monotonic() + DEADLINE
        while not cache.covers(PreparedRepo(repo).prepared()):
            assert time.monotonic() < deadline, "no compile cache within the deadline"
            time.sleep(0.2)
        before = files_under(cache.folder)
        assert any(name.count("/") == 1 for name in before)  # Node's own v24... folder
        seen = [data(run(handle, WHERE)) for _ in range(3)]
        assert seen[-1] == {"where": "prepared", "cache": str(cache.folder)}
        assert files_under(cache.folder) == before  # the shims only read it
    assert not os.stat(cache.folder).st_mode & 0o222  # read-only
    inside = measure_shim(node, str(repo.repo_dir), memory_mb,
                          sandbox=SandboxConfig.from_message(SANDBOX))
    assert inside.reason == "success"
    # the shim's bundle and the adaptor's, nothing else loaded from a file, both hit
    assert inside.accepted >= 2 and inside.rejected == 0 and inside.missing == 0, (
        inside.hit_line(), inside.missed)
