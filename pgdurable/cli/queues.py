"""`pgdurable queues list|pause|resume`."""

from __future__ import annotations

import json

import click

from pgdurable.cli.common import dsn_option, friendly_errors, json_option, open_app, verbose


@click.group("queues", invoke_without_command=True)
@click.pass_context
def queues_group(ctx: click.Context) -> None:
    """Show and steer queues (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(queues_list)


@queues_group.command("list")
@dsn_option
@json_option
def queues_list(dsn: str | None = None, as_json: bool = False) -> None:
    """Queues with their limits, paused flag, ready and running counts."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            rows = app.admin.queue_stats()
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        click.echo(f"{'QUEUE':<20} {'STATE':<7} {'READY':>7} {'RUNNING':>7}  LIMITS")
        for r in rows:
            limits = []
            if r["concurrency"]:
                limits.append(f"concurrency={r['concurrency']}")
            if r["worker_concurrency"]:
                limits.append(f"worker_concurrency={r['worker_concurrency']}")
            if r["rate_limit"]:
                limits.append(f"rate={r['rate_limit']}/{r['rate_period_seconds']:g}s")
            if r["partition_concurrency"]:
                limits.append(f"partition_concurrency={r['partition_concurrency']}")
            state = "paused" if r["paused"] else "active"
            click.echo(f"{r['name']:<20} {state:<7} {r['ready']:>7} {r['running']:>7}  "
                       f"{' '.join(limits) or '-'}")


@queues_group.command("pause")
@dsn_option
@click.argument("name")
def queues_pause(dsn: str | None, name: str) -> None:
    """Stop workers from claiming runs of a queue (running ones continue)."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            app.admin.pause_queue(name)
        click.echo(f"{name}: paused")


@queues_group.command("resume")
@dsn_option
@click.argument("name")
def queues_resume(dsn: str | None, name: str) -> None:
    """Let workers claim runs of a paused queue again."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            app.admin.resume_queue(name)
        click.echo(f"{name}: active")
