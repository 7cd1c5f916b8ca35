"""`pgdurable migrate` and `pgdurable dev`: the schema and the embedded server."""

from __future__ import annotations

import click

from pgdurable.cli.common import dsn_option, friendly_errors, verbose
from pgdurable.dev import embedded
from pgdurable.dev.config import resolve_dsn
from pgdurable.store import migrate
from pgdurable.store.database import connect


@click.command("migrate")
@dsn_option
@click.option("--show-sql", is_flag=True, help="Print the schema SQL instead of applying it.")
def migrate_cmd(dsn: str | None, show_sql: bool) -> None:
    """Apply the pgdurable schema (idempotent: a second run changes nothing)."""
    if show_sql:
        click.echo(migrate.full_sql())
        return
    with friendly_errors(verbose()):
        with connect(resolve_dsn(dsn)) as conn:
            applied = migrate.migrate(conn)
        if applied:
            for filename in applied.filenames:
                click.echo(f"applied {filename}")
        else:
            click.echo(f"schema is up to date (version {migrate.latest_version()})")


@click.command("dev")
@click.option("--stop", is_flag=True, help="Stop the embedded server instead.")
def dev_cmd(stop: bool) -> None:
    """Start (or reuse) the embedded PostgreSQL under ./.pgdurable and print its DSN.

    Data directory: $PGDURABLE_DATA_DIR/pg (default ./.pgdurable/pg). Use the DSN with
    `export PGDURABLE_DSN=...` or psql.
    """
    with friendly_errors(verbose()):
        if stop:
            click.echo("stopped" if embedded.stop() else "not running")
            return
        click.echo(embedded.ensure_running())
