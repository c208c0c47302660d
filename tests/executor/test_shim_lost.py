"""The executor protocol's ``shim-lost``: an idle shim that dies is reported at once and
replaced (``recycled``, cause ``crash``), then ``ready`` again with the new shim."""

from __future__ import annotations

import os
import signal

import pytest

from tests.executor.conftest import DEADLINE, executor, run


@pytest.mark.parametrize("isolation", ["context", "strict"])
def test_an_idle_shim_killed_is_reported_and_replaced(isolation: str) -> None:
    with executor(isolation) as handle:
        old = handle.ready["shim_pid"]  # type: ignore[attr-defined]
        os.kill(old, signal.SIGKILL)
        seen = []
        while not seen or seen[-1]["type"] != "ready":
            message = handle.recv(DEADLINE)
            assert message is not None, f"no message within {DEADLINE}s after {seen}"
            seen.append(message)
        assert [m["type"] for m in seen] == ["shim-lost", "recycled", "ready"]
        assert seen[0]["shim_pid"] == old
        assert (seen[1]["cause"], seen[1]["old_shim_pid"]) == ("crash", old)
        assert seen[2]["shim_pid"] == seen[1]["new_shim_pid"]
        assert seen[2]["shim_pid"] not in (None, old)
        assert run(handle, "fn(s => ({ data: 1 }))").complete["reason"] == "success"
