"""The seed repo: adaptors baked into a read-only folder (the container image's), copied into
the adaptor repo at start when the repo lacks them.

Why: an image bakes adaptors in so a pool runs its usual jobs without the npm registry, but
operators mount a volume at ``WORKER_REPO_DIR`` (adaptors installed at run time must outlive the
container), and a volume hides whatever the image had there. So the image keeps its adaptors in
a seed repo (``WORKER_SEED_REPO``, ``/usr/lib/poolctl/seed-repo``) and ``poolctl start`` copies
each seeded adaptor the repo does not have, under the repo's lock (``AdaptorRepo.locked``: npm
installs by executors and ``poolctl install`` take the same lock), before any executor starts.

The seed repo has the repo's layout (``pool/adaptors.py``: aliases ``<name>_<version>`` in
``node_modules`` and in ``package.json``, their dependencies hoisted beside them by npm). An
adaptor is copied with every top-level package its dependency tree resolves to (Node's lookup:
the nearest ``node_modules`` upwards), and only if none of those is in the repo at another
version: two npm trees do not always merge, and a dependency replaced under an adaptor already
installed would change what that adaptor runs. An adaptor that cannot be merged is left out,
with a warning; npm installs it on its first run (or the run fails offline, saying so).

The copy is written as npm writes: the folders first, each under a temporary name and renamed
into place, then ``package.json`` (atomically), which is what makes an alias count as installed
for the readers that take no lock. npm's record of the tree (``node_modules/.package-lock.json``)
is removed, so the next npm install reads the tree from disk instead of a record that lacks the
copied packages. Caches (prepared bundles, Node's compile cache) are not seeded: the pool builds
them as the uids that use them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pool.adaptors import AdaptorRepo

HIDDEN_LOCKFILE = ".package-lock.json"
DEPENDENCY_FIELDS = ("dependencies", "optionalDependencies", "peerDependencies")


class SeedError(Exception):
    """The seed repo named by ``WORKER_SEED_REPO`` cannot be read."""


@dataclass
class SeedResult:
    """What a seeding did: aliases copied, aliases already there, aliases left out (and why)."""

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _dependencies(package_json: Path) -> dict[str, str]:
    deps = _read_json(package_json).get("dependencies") or {}
    return {str(k): str(v) for k, v in deps.items()} if isinstance(deps, dict) else {}


def _installed(modules: Path, deps: dict[str, str], alias: str) -> bool:
    """As ``AdaptorRepo.is_installed``: the alias in ``package.json`` and its folder there."""
    return alias in deps and (modules / alias / "package.json").is_file()


def _resolve(package_dir: Path, dependency: str, repo_dir: Path) -> Path | None:
    """Where Node finds ``dependency`` from ``package_dir``: the nearest ``node_modules`` upwards,
    no higher than the repo."""
    for folder in (package_dir, *package_dir.parents):
        if folder.name != "node_modules":
            candidate = folder / "node_modules" / dependency
            if (candidate / "package.json").is_file():
                return candidate
        if folder == repo_dir:
            return None
    return None


def _top_level(path: Path, modules: Path) -> str | None:
    """The top-level ``node_modules`` entry ``path`` is (``lodash``, ``@scope/name``), or None
    for a package nested inside another (copied with it)."""
    try:
        parts = path.relative_to(modules).parts
    except ValueError:
        return None
    if len(parts) == 1 and not parts[0].startswith("@"):
        return parts[0]
    if len(parts) == 2 and parts[0].startswith("@"):
        return f"{parts[0]}/{parts[1]}"
    return None


def needed_packages(repo_dir: Path, alias: str) -> set[str]:
    """The top-level packages of ``repo_dir``'s ``node_modules`` that ``alias`` needs to run:
    itself and everything its dependency tree resolves to there."""
    modules = repo_dir / "node_modules"
    needed = {alias}
    stack, seen = [modules / alias], set()
    while stack:
        package = stack.pop()
        if package in seen:
            continue
        seen.add(package)
        meta = _read_json(package / "package.json")
        for key in DEPENDENCY_FIELDS:
            deps = meta.get(key) or {}
            for dependency in deps if isinstance(deps, dict) else ():
                found = _resolve(package, str(dependency), repo_dir)
                if found is None:  # an optional or peer dependency npm did not install
                    continue
                name = _top_level(found, modules)
                if name is not None:
                    needed.add(name)
                stack.append(found)
    return needed


def _version(package_dir: Path) -> str | None:
    version = _read_json(package_dir / "package.json").get("version")
    return str(version) if version is not None else None


def _copy_in(source: Path, target: Path) -> None:
    """``source`` copied to ``target`` under a temporary name, then renamed into place: a reader
    never sees half a package."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".seed-{target.name}-", dir=target.parent))
    try:
        shutil.copytree(source, staging / "package", symlinks=True)
        # the seed is read-only; the repo's copy must stay writable by the pool (npm reinstalls)
        for folder, dirs, files in os.walk(staging / "package"):
            for name in (*dirs, *files):
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | 0o200)
            os.chmod(folder, os.stat(folder).st_mode | 0o200)
        os.rename(staging / "package", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def seed(seed_dir: str, repo: AdaptorRepo) -> SeedResult:
    """Copy every adaptor of ``seed_dir`` that ``repo`` lacks into it, under the repo's lock."""
    seed_root = Path(seed_dir).expanduser().absolute()
    if not (seed_root / "package.json").is_file():
        raise SeedError(f"WORKER_SEED_REPO {seed_root} is not an adaptor repo (no package.json)")
    seeded = _dependencies(seed_root / "package.json")
    seed_modules = seed_root / "node_modules"
    result = SeedResult()
    repo.ensure_repo()
    modules = repo.repo_dir / "node_modules"
    with repo.locked():
        deps = _dependencies(repo.repo_dir / "package.json")
        for alias, spec in sorted(seeded.items()):
            if _installed(modules, deps, alias):
                result.present.append(alias)
                continue
            if not _installed(seed_modules, seeded, alias):
                result.skipped[alias] = f"the seed repo has no {alias} folder"
                continue
            needed = needed_packages(seed_root, alias)
            clashes = [f"{name} {_version(modules / name)} (seed: {_version(seed_modules / name)})"
                       for name in sorted(needed) if name != alias and (modules / name).exists()
                       and _version(modules / name) != _version(seed_modules / name)]
            if clashes:
                result.skipped[alias] = ("the repo holds other versions of its dependencies: "
                                         + ", ".join(clashes))
                continue
            if (modules / alias).exists():  # a folder npm left without its package.json entry
                shutil.rmtree(modules / alias)
            for name in sorted(needed):
                if not (modules / name).exists():
                    _copy_in(seed_modules / name, modules / name)
            deps[alias] = spec
            result.copied.append(alias)
        if result.copied:
            (modules / HIDDEN_LOCKFILE).unlink(missing_ok=True)
            package = _read_json(repo.repo_dir / "package.json")
            package["dependencies"] = dict(sorted(deps.items()))
            AdaptorRepo._write_json_atomic(repo.repo_dir / "package.json", package)
    return result


def seed_repo_command(settings: Any) -> tuple[str | None, list[str]]:
    """``poolctl start`` with ``WORKER_SEED_REPO``: seed the repo. What to log: the line saying
    what was copied (None without a seed repo) and a warning per adaptor left out."""
    if not settings.seed_repo:
        return None, []
    repo = AdaptorRepo(settings.repo_dir)
    result = seed(settings.seed_repo, repo)
    summary = (f"seed repo {settings.seed_repo}: copied {', '.join(result.copied) or 'nothing'} "
               f"into {repo.repo_dir} ({len(result.present)} already there)")
    return summary, [f"seed repo: {alias} not copied: {why}; npm installs it on its first run"
                     for alias, why in result.skipped.items()]
