"""`pgdurable workflows list|show|steps|tree|cancel|resume|fork`: inspect and steer runs."""

from __future__ import annotations

import json
from typing import Any

import click

from pgdurable.api.handles import TreeNode, WorkflowInfo
from pgdurable.cli.common import dsn_option, friendly_errors, json_option, open_app, verbose
from pgdurable.core.errors import PgDurableError

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
SHOW_CHILDREN = 20  # children listed by `show` (the rest are counted)


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
@click.option("--parent", metavar="ID", help="Only the children of this run.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def workflows_list(
    dsn: str | None, as_json: bool, status: str | None, name: str | None,
    parent: str | None, limit: int,
) -> None:
    """List runs, most recent first."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            runs = app.admin.list_workflows(status=status, name=name, limit=limit,
                                            parent=parent)
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
    """Show one run, its recorded steps and its children."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            info = app.admin.get_workflow(workflow_id)
            steps = app.admin.list_steps(workflow_id)
            kids = app.admin.workflow_tree(workflow_id, max_depth=1, per_parent=SHOW_CHILDREN)
        if as_json:
            data = _info_dict(info)
            data["steps"] = [s.model_dump(mode="json") for s in steps]
            data["children"] = [{"id": c.id, "status": c.status, "name": c.name}
                                for c in kids.children]
            data["more_children"] = kids.more
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"id:       {info.id}\nname:     {info.name}\nstatus:   {info.status}\n"
                   f"epoch:    {info.attempt}\nowner:    {info.owner or '-'}\n"
                   f"created:  {info.created_at}\nfinished: {info.finished_at or '-'}")
        if info.parent_id is not None:
            click.echo(f"parent:   {info.parent_id}")
        if info.forked_from is not None:
            click.echo(f"forked:   from {info.forked_from}")
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
        if kids.children:
            click.echo(f"children: {len(kids.children) + kids.more}")
            for c in kids.children:
                click.echo(f"  {c.id}  {c.status:<9} {c.name}")
            if kids.more:
                click.echo(f"  ... {kids.more} more (pgdurable workflows list --parent {info.id})")


@workflows.command("steps")
@dsn_option
@json_option
@click.argument("workflow_id")
def workflows_steps(dsn: str | None, as_json: bool, workflow_id: str) -> None:
    """List a run's recorded steps: the positions to fork from."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            app.admin.get_workflow(workflow_id)  # an unknown run is an error, not "no steps"
            steps = app.admin.list_steps(workflow_id)
        if as_json:
            click.echo(json.dumps([{"step_no": s.step_no, "name": s.name, "status": s.status}
                                   for s in steps], indent=2))
            return
        if not steps:
            click.echo("no recorded steps (fork --from-step 0 starts it again)")
            return
        click.echo(f"{'STEP':>4}  {'STATUS':<7}  NAME")
        for s in steps:
            click.echo(f"{s.step_no:>4}  {s.status:<7}  {s.name}")
        last = steps[-1].step_no + 1
        click.echo(f"fork --from-step N copies steps 0..N-1 and runs the rest again "
                   f"(N in 0..{last}; {last} continues a copy)")


@workflows.command("fork")
@dsn_option
@click.option("--from-step", "from_step", type=click.IntRange(min=0), required=True,
              help="The first step the fork runs again (earlier ones are copied).")
@click.option("--id", "new_id", metavar="NEW_ID", help="The fork's id (default: a UUID).")
@click.option("--queue", help="The queue the fork runs on (default: the original's).")
@click.argument("workflow_id")
def workflows_fork(dsn: str | None, from_step: int, new_id: str | None, queue: str | None,
                   workflow_id: str) -> None:
    """Fork a run from a step: a new queued run with its inputs and steps 0..N-1. Prints the
    new run's id; the original is not changed."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            fork_id = app.admin.fork(workflow_id, from_step=from_step, workflow_id=new_id,
                                     queue=queue)
        click.echo(fork_id)


@workflows.command("tree")
@dsn_option
@json_option
@click.option("--max-depth", type=click.IntRange(min=1, max=100), default=20, show_default=True,
              help="Levels shown below the run.")
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True,
              help="Runs shown in all (breadth first).")
@click.option("--per-parent", type=click.IntRange(min=1), default=100, show_default=True,
              help="Children shown under each run (oldest first).")
@click.argument("workflow_id")
def workflows_tree(dsn: str | None, as_json: bool, max_depth: int, limit: int, per_parent: int,
                   workflow_id: str) -> None:
    """Print a run and its descendants with their statuses."""
    with friendly_errors(verbose()):
        with open_app(dsn) as app:
            root = app.admin.workflow_tree(workflow_id, max_depth=max_depth,
                                           per_parent=per_parent, limit=limit)
        if as_json:
            click.echo(json.dumps(_tree_dict(root), indent=2))
            return
        _print_tree(root)


def _tree_dict(node: TreeNode) -> dict[str, Any]:
    return {"id": node.id, "name": node.name, "status": node.status, "more": node.more,
            "children": [_tree_dict(c) for c in node.children]}


def _print_tree(node: TreeNode) -> None:
    pad = "  " * node.depth
    click.echo(f"{pad}{node.id}  {node.status}  {node.name}")
    for child in node.children:
        _print_tree(child)
    if node.more:
        click.echo(f"{pad}  ... {node.more} more")


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
