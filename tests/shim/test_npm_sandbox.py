"""npm writes only the adaptor repo (bubblewrap), and runs only adaptors the operator permits.

The sandbox is tried as an attacker would: an npm that has been subverted (a hostile tarball or
configuration taking it over) and tries to change what it must not — a file every later run
loads, the operator's shell profile — while writing into the repo as npm does."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pool import npm_sandbox
from pool.adaptors import AdaptorError, AdaptorRepo
from tests.shim.conftest import REPO_DIR

COMMON = "@openfn/language-common@3.3.4"
HTTP = "@openfn/language-http@7.2.10"


@pytest.fixture
def victims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """Files outside the repo a subverted npm would like to change: one under /var/tmp (the
    sandbox shows it read-only), one in /tmp and one in HOME (the sandbox hides both)."""
    outside = Path(tempfile.mkdtemp(prefix="poolctl-npm-victim-", dir="/var/tmp"))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    files = {"shared": outside / "dist-index.js", "tmp": tmp_path / "victim.js",
             "home": home / ".bashrc"}
    for path in files.values():
        path.write_text("original\n")
    yield files
    shutil.rmtree(outside)


def subverted_npm(tmp_path: Path, victims: dict[str, Path]) -> str:
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    appends = "".join(f'echo pwned >> "{path}"\n' for path in victims.values())
    npm.write_text(f'#!/bin/sh\necho planted > "$PWD/planted"\n{appends}exit 1\n')
    npm.chmod(0o755)
    return str(npm)


def contents(victims: dict[str, Path]) -> dict[str, str]:
    return {name: path.read_text() for name, path in victims.items()}


@pytest.mark.skipif(npm_sandbox.bwrap_problem() is not None,
                    reason="bubblewrap unusable here: `make setup` installs it when root")
def test_a_subverted_npm_changes_nothing_outside_the_repo(tmp_path: Path,
                                                          victims: dict[str, Path]) -> None:
    repo = AdaptorRepo(str(tmp_path / "repo"), npm=subverted_npm(tmp_path, victims))
    with pytest.raises(AdaptorError, match="Error installing @openfn/language-common@3.3.4"):
        repo.resolve(COMMON)
    assert (tmp_path / "repo" / "planted").read_text() == "planted\n"  # the repo: writable
    assert contents(victims) == {name: "original\n" for name in victims}


def test_without_bwrap_npm_runs_unsandboxed_and_says_so_once(
        tmp_path: Path, victims: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(npm_sandbox, "BWRAP", "bwrap-not-installed")
    monkeypatch.setattr(npm_sandbox, "_warned", False)
    repo = AdaptorRepo(str(tmp_path / "repo"), npm=subverted_npm(tmp_path, victims))
    with caplog.at_level(logging.WARNING, logger="pool.adaptors"):
        for _ in range(2):
            with pytest.raises(AdaptorError):
                repo.resolve(COMMON)
    warnings = [r.getMessage() for r in caplog.records if "without a sandbox" in r.getMessage()]
    assert warnings == ["npm runs without a sandbox: bwrap-not-installed is not installed "
                        "(Debian: apt-get install bubblewrap); an npm or tarball exploit could "
                        "then change files outside the adaptor repo"]
    assert contents(victims)["tmp"] == "original\npwned\npwned\n"  # really unsandboxed


def test_the_allowlist_permits_names_or_exact_versions() -> None:
    only_http = AdaptorRepo(REPO_DIR, offline=True, allowlist=["@openfn/language-http"])
    assert only_http.resolve(HTTP).version == "7.2.10"
    with pytest.raises(AdaptorError) as refused:
        only_http.resolve(COMMON)
    assert str(refused.value) == (
        "Error installing @openfn/language-common@3.3.4: @openfn/language-common@3.3.4 is not "
        "permitted on this worker (WORKER_ADAPTOR_ALLOWLIST: @openfn/language-http)")
    pinned = AdaptorRepo(REPO_DIR, offline=True, allowlist=[COMMON])
    assert pinned.resolve("@openfn/language-common@latest").version == "3.3.4"
    with pytest.raises(AdaptorError, match="language-common@1.0.0 is not permitted"):
        pinned.resolve("@openfn/language-common@1.0.0")  # refused before any lookup
    for bad in ("lodash", "@openfn/language-common@^3.0.0", "@openfn/language-common@next"):
        with pytest.raises(AdaptorError):
            AdaptorRepo(REPO_DIR, allowlist=[bad])
