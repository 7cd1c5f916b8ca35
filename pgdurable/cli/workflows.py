"""`pgdurable workflows list|show|cancel|resume`: inspect and steer runs."""

from __future__ import annotations

import json
from typing import Any

import click

from pgdurable.api.handles import WorkflowInfo
from pgdurable.cli.common import dsn_option, friendly_errors, json_option, open_app, verbose
from pgdurable.core.errors import PgDurableError

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


@click.group("workflows")
def workflows() -> None:
    """Inspect and steer workflow runs."""


def _info_dict(info: WorkflowInfo) -> dict[str, Any]:
    return info.model_dump(mode="json")


@workflows.command("list")
@dsn_option
@json_option
@click.option("--status", type=click.Choice(STATUSES), help="Only runs with this status.")
@click.option("--name", help="Only runs of this workflow name.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def workflows_list(
    dsn: str | None, as_json: bool, status: str | None, name: str | None, limit: int
) -> None:
    """List runs, most recent first."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            runs = app.admin.list_workflows(status=status, name=name, limit=limit)
        if as_json:
            click.echo(json.dumps([_info_dict(r) for r in runs], indent=2))
            return
        if not runs:
            click.echo("no workflows")
            return
        width = max(len("ID"), *(len(r.id) for r in runs))
        click.echo(f"{'ID':<{width}}  {'STATUS':<10} {'EPOCH':>5}  {'CREATED':<19}  NAME")
        for r in runs:
            click.echo(f"{r.id:<{width}}  {r.status:<10} {r.attempt:>5}  "
                       f"{r.created_at:%Y-%m-%d %H:%M:%S}  {r.name}")


@workflows.command("show")
@dsn_option
@json_option
@click.argument("workflow_id")
def workflows_show(dsn: str | None, as_json: bool, workflow_id: str) -> None:
    """Show one run and its recorded steps."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            info = app.admin.get_workflow(workflow_id)
            steps = app.admin.list_steps(workflow_id)
        if as_json:
            data = _info_dict(info)
            data["steps"] = [s.model_dump(mode="json") for s in steps]
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"id:       {info.id}\nname:     {info.name}\nstatus:   {info.status}\n"
                   f"epoch:    {info.attempt}\nowner:    {info.owner or '-'}\n"
                   f"created:  {info.created_at}\nfinished: {info.finished_at or '-'}")
        if info.waiting_for is not None:  # suspended: what wakes it, and by when
            until = f" (until {info.available_at})" if info.available_at is not None else ""
            click.echo(f"waiting:  {info.waiting_for}{until}")
        elif info.status == "pending" and info.available_at is not None:
            click.echo(f"due:      {info.available_at}")
        click.echo(f"inputs:   {json.dumps(info.inputs)}")
        if info.status == "succeeded":
            click.echo(f"output:   {json.dumps(info.output)}")
        if info.error:
            click.echo(f"error:    {info.error.get('type')}: {info.error.get('message')}")
        for s in steps:
            shown = json.dumps(s.output) if s.status == "done" else (s.error or {}).get("message")
            click.echo(f"  step {s.step_no:>3} {s.status:<7} {s.name}  {shown}")


@workflows.command("cancel")
@dsn_option
@click.option("--cascade/--no-cascade", default=True, show_default=True,
              help="Also cancel every unfinished descendant (child runs, recursively).")
@click.argument("workflow_id")
def workflows_cancel(dsn: str | None, cascade: bool, workflow_id: str) -> None:
    """Cancel a run that has not finished, with its descendants unless --no-cascade."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            status = app.admin.cancel(workflow_id, cascade=cascade)
        click.echo(f"{workflow_id}: {status}")


@workflows.command("resume")
@dsn_option
@click.option("--app", "app_path", metavar="MODULE:APP",
              help="Continue the run in this process, with the App at this import path. "
              "Without it the run goes back on its queue for a worker.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="With --app: wait for the run to finish.")
@click.argument("workflow_id")
def workflows_resume(dsn: str | None, app_path: str | None, wait: bool, workflow_id: str) -> None:
    """Continue a failed, cancelled or abandoned run from its checkpoints."""
    with friendly_errors(verbose()):
        with open_app(dsn, app_path) as app:
            if app_path is None:
                click.echo(f"{workflow_id}: {app.admin.requeue(workflow_id)}")
                return
            handle = app.resume(workflow_id)
            info = handle.info()
            if info.status == "running" and info.owner != app.executor.worker_id:
                raise click.ClickException(
                    f"{workflow_id} is running, owned by {info.owner} until "
                    f"{info.lease_until:%H:%M:%S %Z}: not resumed (try again once its lease "
                    "expires)"
                )
            if wait:
                try:
                    handle.result()
                except PgDurableError:
                    pass
            click.echo(f"{workflow_id}: {handle.status()}")
