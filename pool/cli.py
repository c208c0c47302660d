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
from pool.settings import (
    Settings,
    SettingsError,
    bound_help,
    load_settings,
    parse_bool,
    rows_for,
)


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
            default += bound_help(row)
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


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@with_settings("status")
def status(as_json: bool, settings: Settings) -> None:
    """Show the running pool: executors (pid, state, run, runs done, RSS, age), claims, runs."""
    from pool.supervisor.control import control_command

    sys.exit(control_command(settings, "status", as_json=as_json))


@main.command("scale")
@click.argument("size", type=int)
@with_settings("scale")
def scale(size: int, settings: Settings) -> None:
    """Resize the running pool to SIZE executors (kept across SIGHUP)."""
    from pool.supervisor.control import control_command

    sys.exit(control_command(settings, "scale", size=size))


@main.command("drain")
@with_settings("drain")
def drain(settings: Settings) -> None:
    """Stop claiming runs; running ones finish; the pool stays up and /readyz turns 503."""
    from pool.supervisor.control import control_command

    sys.exit(control_command(settings, "drain"))


@main.command("stop")
@click.option("--now", is_flag=True, help="Fast stop: kill running runs (reported as kill).")
@with_settings("stop")
def stop(now: bool, settings: Settings) -> None:
    """Stop the running pool: drain then exit (as SIGTERM), or at once with --now (SIGQUIT)."""
    from pool.supervisor.control import control_command

    sys.exit(control_command(settings, "stop", graceful=not now))


@main.command("tune")
@click.option("--workflow", "workflows", multiple=True, type=click.Path(dir_okay=False),
              help="A run file (as examples/: plan, credentials, dataclips) to measure instead "
                   "of the built-in mix; repeatable.")
@click.option("--run-memory-mb", "plan_memory_mb", type=click.IntRange(min=1), default=None,
              help="Per-run memory limit to plan for [default: --run-memory / "
                   "WORKER_MAX_RUN_MEMORY_MB].")
@click.option("--memory-budget", type=click.FloatRange(min=1), default=None, metavar="MB",
              help="Memory the pool may use, in MB [default: 80 % of RAM].")
@click.option("--max-size", type=click.IntRange(min=1), default=None,
              help="Largest size to measure [default: 4 x cores].")
@click.option("--budget-seconds", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="Seconds of runs per measured size.")
@click.option("--quick", is_flag=True, help="Sizes 1 and 2, 4 s each: a smoke test.")
@click.option("--write", type=click.Path(dir_okay=False), default=None,
              help="Write the recommendation as a config file for poolctl start --config.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Draw throughput and p95 against size into this PNG (needs matplotlib).")
@click.option("--trusted", is_flag=True,
              help="Every job on this Lightning is trusted (one organisation's own code): "
                   "context, which keeps runs but not tenants apart, may then be recommended "
                   "when strict is much slower.")
@with_settings("tune")
def tune(workflows: tuple[str, ...], plan_memory_mb: int | None, memory_budget: float | None,
         max_size: int | None, budget_seconds: float, quick: bool, write: str | None,
         plot: str | None, trusted: bool, settings: Settings) -> None:
    """Measure this machine and recommend --size for strict, with context's figures beside it
    (recommended only with --trusted): a real pool against a dev server."""
    from pool.bench.tune import TuneOptions, tune_command

    sys.exit(tune_command(settings, TuneOptions(
        workflows=workflows, run_memory_mb=plan_memory_mb, memory_budget_mb=memory_budget,
        max_size=max_size, budget_s=budget_seconds, quick=quick, write=write, plot=plot,
        trusted=trusted)))


if __name__ == "__main__":
    main()
