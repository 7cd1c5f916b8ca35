"""`pgdurable schedules list`."""

from __future__ import annotations

import json
from datetime import UTC

import click

from pgdurable.cli.common import dsn_option, friendly_errors, json_option, open_app, verbose


@click.group("schedules", invoke_without_command=True)
@click.pass_context
def schedules_group(ctx: click.Context) -> None:
    """Show cron schedules (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(schedules_list)


@schedules_group.command("list")
@dsn_option
@json_option
def schedules_list(dsn: str | None = None, as_json: bool = False) -> None:
    """Schedules with their cron expression, workflow, queue, last tick and last error."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            rows = app.admin.list_schedules()
        if as_json:
            click.echo(json.dumps(rows, indent=2, default=str))
            return
        click.echo(f"{'SCHEDULE':<20} {'CRON':<16} {'QUEUE':<12} {'LAST TICK (UTC)':<17} "
                   "WORKFLOW")
        for r in rows:
            tick = r["last_tick"].astimezone(UTC).strftime("%Y-%m-%d %H:%M")
            click.echo(f"{r['name']:<20} {r['cron']:<16} {r['queue']:<12} {tick:<17} "
                       f"{r['workflow_name']}")
            if r["last_error"]:
                error = r["last_error"]
                click.echo(f"  last error at {r['last_error_at']}: {error.get('message')} "
                           f"(SQLSTATE {error.get('sqlstate')})")
