"""Where benchmark results go: ``bench/results/<timestamp>-<kind>.json`` (+ ``.png``), with the
machine they were measured on, so figures from different runs can be compared honestly."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

RESULTS_DIR = Path("bench") / "results"


def machine() -> dict[str, Any]:
    node = shutil.which("node")
    node_version = (subprocess.run([node, "--version"], capture_output=True, text=True,
                                   check=False).stdout.strip() if node else None)
    return {"cores": os.cpu_count(), "ram_mb": psutil.virtual_memory().total // 2**20,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "node": node_version, "kernel": platform.release()}


def stem(kind: str, directory: Path = RESULTS_DIR) -> Path:
    """A fresh path without extension, e.g. ``bench/results/20250101-120000-bench``."""
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"machine": machine(), **data}, indent=1) + "\n")
    return path
