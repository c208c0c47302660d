"""Progress of a long measurement on stderr: bars on a terminal, plain lines anywhere else.

tqdm's nested bars move the cursor with escape sequences and redraw with carriage returns;
in a log file or a CI transcript that is noise. When stderr is not a terminal, a measurement
says instead, one line each, which cell it starts and how many runs the cell completed.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm


class PlainCells:
    """The outer bar's interface (``set_postfix_str``, ``update``) as plain lines."""

    def __init__(self, total: int, what: str, out: TextIO) -> None:
        self.total, self.what, self.out = total, what, out
        self.n = 0

    def set_postfix_str(self, text: str) -> None:
        print(f"{self.what}: measuring {text} (cell {self.n + 1} of {self.total})",
              file=self.out, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n

    def __enter__(self) -> PlainCells:
        return self

    def __exit__(self, *exc: object) -> None:
        print(f"{self.what}: {self.n} of {self.total} cells done", file=self.out, flush=True)


class PlainRuns:
    """The inner (per-run) bar as one line when the cell ends: a line per run would flood."""

    def __init__(self, what: str, out: TextIO) -> None:
        self.what, self.out = what, out
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def __enter__(self) -> PlainRuns:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            print(f"{self.what}:   {self.n} runs completed", file=self.out, flush=True)


def on_terminal(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def cell_bar(total: int, what: str, out: TextIO | None = None) -> Any:
    """The cells of a measurement: a tqdm bar on a terminal, else ``PlainCells``."""
    out = out or sys.stderr
    if on_terminal(out):
        return tqdm(total=total, unit="cell", file=out, dynamic_ncols=True)
    return PlainCells(total, what, out)


def run_bar(what: str, out: TextIO | None = None) -> Any:
    """The runs of one cell, under ``cell_bar``: a second tqdm line, else ``PlainRuns``."""
    out = out or sys.stderr
    if on_terminal(out):
        return tqdm(unit="run", file=out, leave=False, position=1, dynamic_ncols=True)
    return PlainRuns(what, out)
