"""The adaptor repo against the real npm registry: concurrent installs, failures, resolution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pool.adaptors import AdaptorError, AdaptorRepo, parse_specifier, semver_key
from tests.shim.conftest import REPO_DIR

INSTALL = ("import sys; from pool.adaptors import AdaptorRepo; "
           "a = AdaptorRepo(sys.argv[1]).resolve(sys.argv[2]); print(a.path)")


def test_two_processes_install_the_same_adaptor_at_once(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    spec = "@openfn/language-common@3.3.4"
    procs = [subprocess.Popen([sys.executable, "-c", INSTALL, str(repo_dir), spec],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(repo_dir / "node_modules/@openfn/language-common_3.3.4")}
    pkg = json.loads((repo_dir / "package.json").read_text())
    assert list(pkg["dependencies"]) == ["@openfn/language-common_3.3.4"]
    installed = json.loads((Path(paths.pop()) / "package.json").read_text())
    assert installed["version"] == "3.3.4"


def test_a_failed_install_says_why(tmp_path: Path) -> None:
    repo = AdaptorRepo(str(tmp_path / "repo"))
    with pytest.raises(AdaptorError) as err:
        repo.resolve("@openfn/language-common@99.99.99")
    message = str(err.value)
    assert message.startswith("Error installing @openfn/language-common@99.99.99: ")
    assert "No matching version" in message  # npm's own reason


def test_only_openfn_adaptors_are_allowed() -> None:
    with pytest.raises(AdaptorError, match="only @openfn/"):
        parse_specifier("lodash@4.17.21")
    with pytest.raises(AdaptorError, match="exact"):
        parse_specifier("@openfn/language-common@^3.0.0")
    assert parse_specifier("@openfn/language-common") == ("@openfn/language-common", None)
    assert parse_specifier("@openfn/language-common@latest") == ("@openfn/language-common", None)


def test_versions_compare_as_semver() -> None:
    versions = ["7.9.0", "7.10.0", "7.10.0-rc.1", "10.0.0"]
    assert sorted(versions, key=semver_key) == ["7.9.0", "7.10.0-rc.1", "7.10.0", "10.0.0"]


def test_offline_uses_what_is_installed_and_fails_fast() -> None:
    repo = AdaptorRepo(REPO_DIR, offline=True)
    latest = repo.resolve("@openfn/language-common")
    assert latest.version == repo.installed_versions("@openfn/language-common")[-1]
    with pytest.raises(AdaptorError, match="offline"):
        repo.resolve("@openfn/language-common@1.0.0")


def test_latest_is_looked_up_once_and_cached(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    repo = AdaptorRepo(str(repo_dir), latest_ttl=3600)
    version = repo._resolve_tag("@openfn/language-common", "latest")
    cache = json.loads((repo_dir / ".poolctl-latest.json").read_text())
    assert cache["@openfn/language-common@latest"]["version"] == version
    # a cached answer is used without npm: a broken npm binary proves it is not called
    cached = AdaptorRepo(str(repo_dir), latest_ttl=3600, npm="/nonexistent/npm")
    assert cached._resolve_tag("@openfn/language-common", "latest") == version
