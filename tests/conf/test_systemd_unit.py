"""conf/poolctl.service: ``systemd-analyze verify`` passes and the hardening holds, for the
unit (`uid` sandbox, root) and with its drop-in (`namespaces`, unprivileged)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conf.manifests import CONF

ANALYZE = shutil.which("systemd-analyze")
UNITS = Path("/usr/lib/systemd/system")
pytestmark = pytest.mark.skipif(ANALYZE is None or not UNITS.is_dir(),
                                reason="systemd-analyze not installed (.ci/run installs it)")
EXPOSURE_AT_MOST = 4.0  # "OK" in systemd's scale; the Type=simple unit scored 9.2 UNSAFE


def image_root(tmp: Path, drop_in: bool) -> Path:
    """A root for ``--root``: systemd's own units, the unit, and its ExecStart in place."""
    root = tmp / ("namespaces" if drop_in else "uid")
    shutil.copytree(UNITS, root / "usr/lib/systemd/system", symlinks=True)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    shutil.copy(CONF / "poolctl.service", system)
    if drop_in:
        shutil.copytree(CONF / "poolctl.service.d", system / "poolctl.service.d")
    text = (CONF / "poolctl.service").read_text()
    for line in re.findall(r"^Exec\w+=(\S+)", text, re.MULTILINE):
        binary = root / line.lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return root


@pytest.mark.parametrize("drop_in", [False, True], ids=["uid", "namespaces"])
def test_the_unit_verifies_and_scores_ok(tmp_path: Path, drop_in: bool) -> None:
    root = image_root(tmp_path, drop_in)
    verify = subprocess.run([ANALYZE, "verify", f"--root={root}", "poolctl.service"],
                            capture_output=True, text=True, timeout=60)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    security = subprocess.run([ANALYZE, "security", "--offline=yes", f"--root={root}",
                               "poolctl.service"], capture_output=True, text=True, timeout=60)
    line = security.stdout.strip().splitlines()[-1]
    print(f"\n{'with namespaces.conf' if drop_in else 'poolctl.service'}: {line}")
    exposure = float(re.search(r"level for poolctl.service: ([\d.]+)", line).group(1))
    assert exposure <= EXPOSURE_AT_MOST
