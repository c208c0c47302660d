"""The seed repo (pool/seed_repo.py): a read-only repo of baked adaptors copied into the adaptor
repo at start. Seeded from the test repo `make setup` installs with npm (real adaptors, real
hoisted dependencies); Node then imports each seeded adaptor from the new repo, which only works
if every package its tree resolves to came along."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pool.adaptors import AdaptorRepo
from pool.seed_repo import SeedError, needed_packages, seed, seed_repo_command
from pool.settings import load_settings
from tests.supervisor.conftest import REPO


def read_only_seed(tmp_path: Path) -> Path:
    """A copy of the test repo as an image holds it: no caches, nothing writable."""
    seed_dir = tmp_path / "seed"
    shutil.copytree(REPO, seed_dir, symlinks=True,
                    ignore=shutil.ignore_patterns(".prepared", ".compile-cache", ".npm-cache",
                                                  ".poolctl*", ".stamp"))
    for folder, dirs, files in os.walk(seed_dir):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & ~0o222)
    os.chmod(seed_dir, 0o555)
    return seed_dir


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One seed for the module (copying the repo's 12,000 files is most of these tests' time);
    read-only, so no test can change it for the next."""
    path = read_only_seed(tmp_path_factory.mktemp("seed"))
    yield path
    for folder, dirs, _files in os.walk(path):  # let tmp_path's cleanup remove it
        os.chmod(folder, 0o755)
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)


def seeded_aliases(seed_dir: Path) -> list[str]:
    return sorted(json.loads((seed_dir / "package.json").read_text())["dependencies"])


def imports(repo: AdaptorRepo, specifier: str) -> list[str]:
    """The adaptor's export names, as Node imports it from ``repo`` (its package folder)."""
    adaptor = repo.resolve(specifier)
    script = ("const m = await import(process.argv[1]);"
              "console.log(JSON.stringify(Object.keys(m).sort()));")
    main = json.loads((Path(adaptor.path) / "package.json").read_text())
    entry = (main.get("exports", {}).get(".", {}) if isinstance(main.get("exports"), dict)
             else {})
    target = entry.get("import") or entry.get("default") if isinstance(entry, dict) else None
    path = Path(adaptor.path) / (target or main.get("module") or main.get("main") or "index.js")
    proc = subprocess.run(["node", "--input-type=module", "-e", script, str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_an_empty_repo_gets_every_seeded_adaptor_and_node_loads_them(seed_dir: Path,
                                                                      tmp_path: Path) -> None:
    repo = AdaptorRepo(str(tmp_path / "repo"), offline=True)
    result = seed(str(seed_dir), repo)
    assert sorted(result.copied) == seeded_aliases(seed_dir)
    assert not result.skipped and not result.present
    for alias in seeded_aliases(seed_dir):
        name, version = alias.rsplit("_", 1)
        assert repo.is_installed(name, version)
        assert imports(repo, f"{name}@{version}")
    # the copy is the pool's to change (npm installs beside it), not read-only like the seed
    assert os.access(repo.repo_dir / "node_modules" / seeded_aliases(seed_dir)[0], os.W_OK)
    assert not (repo.repo_dir / "node_modules" / ".package-lock.json").exists()


def test_seeding_again_copies_nothing(seed_dir: Path, tmp_path: Path) -> None:
    repo = AdaptorRepo(str(tmp_path / "repo"), offline=True)
    seed(str(seed_dir), repo)
    again = seed(str(seed_dir), repo)
    assert again.copied == [] and sorted(again.present) == seeded_aliases(seed_dir)


def test_a_repo_holding_some_adaptors_gets_the_rest(seed_dir: Path, tmp_path: Path) -> None:
    repo = AdaptorRepo(str(tmp_path / "repo"), offline=True)
    seed(str(seed_dir), repo)
    first, *rest = seeded_aliases(seed_dir)
    package = json.loads((repo.repo_dir / "package.json").read_text())
    for alias in rest:  # as if the volume came from an older image that baked only the first
        shutil.rmtree(repo.repo_dir / "node_modules" / alias)
        del package["dependencies"][alias]
    (repo.repo_dir / "package.json").write_text(json.dumps(package))
    result = seed(str(seed_dir), repo)
    assert result.present == [first] and sorted(result.copied) == rest
    for alias in rest:
        name, version = alias.rsplit("_", 1)
        assert imports(repo, f"{name}@{version}")


def test_the_closure_is_the_adaptors_own_tree() -> None:
    """language-common needs its dependencies, not language-http's."""
    common = needed_packages(Path(REPO), "@openfn/language-common_3.3.4")
    http = needed_packages(Path(REPO), "@openfn/language-http_7.2.10")
    assert "@openfn/language-common_3.3.4" in common and "date-fns" in common
    assert "cheerio" in http and "cheerio" not in common


def test_an_adaptor_whose_dependency_is_there_at_another_version_is_left_out(
        seed_dir: Path, tmp_path: Path) -> None:
    repo = AdaptorRepo(str(tmp_path / "repo"), offline=True)
    repo.ensure_repo()
    # the repo already holds another version of a package language-common's tree needs
    fake = repo.repo_dir / "node_modules" / "date-fns"
    fake.mkdir(parents=True)
    (fake / "package.json").write_text(json.dumps({"name": "date-fns", "version": "0.0.1"}))
    result = seed(str(seed_dir), repo)
    assert "@openfn/language-common_3.3.4" in result.skipped
    assert "date-fns 0.0.1" in result.skipped["@openfn/language-common_3.3.4"]
    assert not repo.is_installed("@openfn/language-common", "3.3.4")
    assert json.loads(fake.joinpath("package.json").read_text())["version"] == "0.0.1"
    _, warnings = seed_repo_command(load_settings({"seed_repo": str(seed_dir),
                                                   "repo_dir": str(repo.repo_dir)},
                                                  command="start"))
    assert any("language-common_3.3.4 not copied" in line for line in warnings), warnings


def test_no_seed_repo_is_a_no_op_and_a_missing_one_an_error(tmp_path: Path) -> None:
    settings = load_settings({"repo_dir": str(tmp_path / "repo")}, command="start")
    assert seed_repo_command(settings) == (None, [])
    assert not (tmp_path / "repo").exists()
    with pytest.raises(SeedError, match="not an adaptor repo"):
        seed(str(tmp_path / "nowhere"), AdaptorRepo(str(tmp_path / "repo")))
