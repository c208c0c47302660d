"""The ``poolctl`` command line: parse, load settings, call into the rooms. No logic lives here.

Every option that is a setting comes from the table in ``pool.settings``; ``--help`` shows
each one with its environment variable and default.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from pool import __version__
from pool.settings import Settings, SettingsError, load_settings, parse_bool, rows_for


def with_settings(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one click option per setting row of ``command`` and pass a resolved ``Settings``.

    The wrapped function receives ``settings`` instead of the individual options; a bad value
    is a one-line error and exit code 2.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        rows = list(rows_for(command))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = {row.name: kwargs.pop(row.name, None) for row in rows}
            config = kwargs.pop("config", None)
            try:
                settings = load_settings(flags, config_path=config, command=command)
            except SettingsError as exc:
                raise click.UsageError(str(exc)) from None
            return fn(*args, settings=settings, **kwargs)

        for row in reversed(rows):
            env = ", ".join(row.env)
            default = "" if row.default in (None, []) else f" [default: {row.default}]"
            help_text = f"{row.help}{default} (env: {env})" if env else row.help + default
            if row.type is parse_bool:
                name = row.flag.lstrip("-")
                decl = [f"{row.flag}/--no-{name}", row.name]
                wrapper = click.option(*decl, default=None, help=help_text)(wrapper)
            else:
                wrapper = click.option(row.flag, row.name, default=None, metavar=row.metavar,
                                       help=help_text)(wrapper)
        wrapper = click.option("--config", type=click.Path(dir_okay=False), default=None,
                               help="TOML file of settings (flags and env win over it).")(wrapper)
        return wrapper

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="poolctl")
def main() -> None:
    """poolctl: a warm, pre-forked worker pool for OpenFn Lightning."""


@main.command("dev-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=4000, show_default=True, help="WebSocket port (Lightning's).")
@click.option("--api-port", default=None, type=int,
              help="HTTP dev API port [default: --port + 1].")
def dev_server(host: str, port: int, api_port: int | None) -> None:
    """Run the strict Lightning dev server and print the environment a worker needs."""
    from pool.devserver.command import run_dev_server

    sys.exit(run_dev_server(host=host, port=port, api_port=api_port))


@main.command("gen-keys")
def gen_keys() -> None:
    """Print WORKER_SECRET, WORKER_RUNS_PRIVATE_KEY and WORKER_LIGHTNING_PUBLIC_KEY."""
    from pool.lightning.tokens import generate_worker_keys

    for key, value in generate_worker_keys().items():
        click.echo(f"{key}={value}")


@main.command("install")
@click.argument("adaptors", nargs=-1, required=True)
@with_settings("install")
def install(adaptors: tuple[str, ...], settings: Settings) -> None:
    """Pre-install adaptors (e.g. @openfn/language-http@7.2.10) into the repo."""
    from pool.adaptors import install_command

    sys.exit(install_command(list(adaptors), settings))


@main.command("execute")
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON file with the initial state.")
@with_settings("execute")
def execute(workflow: str, input_path: str | None, settings: Settings) -> None:
    """Run a workflow file through an executor, with no Lightning; print the final state."""
    from pool.executor.local import execute_command

    sys.exit(execute_command(workflow, input_path, settings))


@main.command("start")
@with_settings("start")
def start(settings: Settings) -> None:
    """Start the supervisor and its pool of warm executors."""
    from pool.supervisor.arbiter import start_command

    sys.exit(start_command(settings))


if __name__ == "__main__":
    main()
