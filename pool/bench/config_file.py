"""Write ``poolctl tune``'s recommendation as the TOML file ``poolctl start --config`` reads.

Keys are setting names (``size``, ``isolation``, ``run_memory_mb``), the same names
``pool.settings.read_config_file`` accepts; the reasoning goes above them as comments so the
file explains itself to the next operator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

from pool.settings import BY_NAME


def toml_value(value: object) -> str:
    """TOML for the scalar types settings take (JSON's string escaping is valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a setting")


def render_config(values: Mapping[str, object], comments: Iterable[str] = ()) -> str:
    """The file's text; every key must be a setting name."""
    unknown = [key for key in values if key not in BY_NAME]
    if unknown:
        raise KeyError(f"not settings: {', '.join(unknown)}")
    lines = [f"# {line}" for line in comments]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def write_config(path: str | os.PathLike[str], values: Mapping[str, object],
                 comments: Iterable[str] = ()) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_config(values, comments))
