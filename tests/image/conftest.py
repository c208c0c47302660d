"""What the container image's test saw, printed at the end of the session (``make test-image``
shows it: the image's size, the sandbox line, the run, the probes, the stop)."""

from __future__ import annotations

from typing import Any

FACTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FACTS:
        terminalreporter.section("the container image")
        for line in FACTS:
            terminalreporter.write_line(line)
