"""The `pgdurable` command line. Thin: parse options, call the library, print.

One module per command group; errors are one line on stderr and a non-zero exit, never a
traceback (use -v for one).
"""

from __future__ import annotations

import importlib
import logging

import click

from pgdurable.cli.queues import queues_group
from pgdurable.cli.schedules import schedules_group
from pgdurable.cli.schema import dev_cmd, migrate_cmd
from pgdurable.cli.worker import recover_cmd, worker_cmd
from pgdurable.cli.workflows import workflows


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix":
                               "PGDURABLE"})
@click.option("-v", "--verbose", is_flag=True, help="Verbose logging; tracebacks on errors.")
@click.version_option(package_name="pgdurable")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """pgdurable: durable workflows whose state machine lives in PostgreSQL."""
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for command in (migrate_cmd, dev_cmd, workflows, worker_cmd, recover_cmd, queues_group,
                schedules_group):
    main.add_command(command)


def _add_bench_command() -> None:
    """`pgdurable bench` lives in its own package, pgdurable_bench (bench/ in the source tree),
    shipped in the same wheel; a build without it simply has no bench command."""
    try:
        bench = importlib.import_module("pgdurable_bench")
    except ImportError:
        return
    main.add_command(bench.bench_command, "bench")


_add_bench_command()


def _give_every_option_an_env_var(command: click.Command) -> None:
    """Every option is also settable as PGDURABLE_<OPTION> (shown in --help), unless it names
    its own variable."""
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("help", "version"):
            if not param.envvar:
                param.envvar = f"PGDURABLE_{(param.name or '').upper()}"
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _give_every_option_an_env_var(sub)


_give_every_option_an_env_var(main)


if __name__ == "__main__":
    main()
