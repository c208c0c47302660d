"""Every WORKER_* variable conf/ names is one poolctl reads (or one Lightning reads)."""

from __future__ import annotations

import re

from pool.settings import SETTINGS, UNSUPPORTED_ENV
from tests.conf.manifests import CONF

# Named by conf/ as issues 12 and 15 specify them; the sandbox, secret-file and journal work
# adds them to pool/settings.py. Once there, they need no entry here.
PENDING = {
    "WORKER_SANDBOX": "issue 12: --sandbox auto|namespaces|uid|none",
}
LIGHTNING_ONLY = {"WORKER_RUNS_PRIVATE_KEY"}  # Lightning's side of the keys


def test_every_worker_variable_in_conf_is_a_setting() -> None:
    known = {env for row in SETTINGS for env in row.env} | set(UNSUPPORTED_ENV)
    named: dict[str, set[str]] = {}
    for path in sorted(p for p in CONF.rglob("*") if p.is_file()):
        for name in re.findall(r"\bWORKER_[A-Z0-9_]+\b", path.read_text()):
            named.setdefault(name, set()).add(str(path.relative_to(CONF)))
    unknown = {name: sorted(files) for name, files in named.items()
               if name not in known | PENDING.keys() | LIGHTNING_ONLY}
    assert not unknown, f"conf/ names variables poolctl does not read: {unknown}"
    assert {"WORKER_SECRET_FILE", "WORKER_STATE_DIR", "WORKER_SANDBOX"} <= named.keys()
