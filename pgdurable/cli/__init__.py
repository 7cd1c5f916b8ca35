"""The `pgdurable` command line. Thin: parse options, call the library, print.

Errors are one line on stderr and a non-zero exit, never a traceback (use -v for one).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import Any, TypeVar

import click

from pgdurable.api.app import App
from pgdurable.api.handles import WorkflowInfo
from pgdurable.core.errors import PgDurableError
from pgdurable.dev import embedded
from pgdurable.dev.config import resolve_dsn
from pgdurable.store import migrate
from pgdurable.store.database import connect

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


def dsn_option(fn: F) -> F:
    return click.option(
        "--dsn",
        envvar="PGDURABLE_DSN",
        show_envvar=True,
        help="PostgreSQL connection string. Default: libpq PG* variables, else the embedded "
        "server under ./.pgdurable.",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


@contextmanager
def friendly_errors(verbose: bool) -> Iterator[None]:
    """Turn expected failures into `error: <one line>` and exit code 1."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except (PgDurableError, OSError, ImportError) as exc:
        if verbose:
            raise
        message = " ".join(str(exc).split())
        raise click.ClickException(message) from None
    except Exception as exc:  # psycopg errors and the like
        if verbose:
            raise
        message = " ".join(str(exc).split())
        raise click.ClickException(f"{type(exc).__name__}: {message}") from None


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


def _verbose() -> bool:
    return bool(click.get_current_context().find_root().obj.get("verbose"))


@main.command("migrate")
@dsn_option
@click.option("--show-sql", is_flag=True, help="Print the schema SQL instead of applying it.")
def migrate_cmd(dsn: str | None, show_sql: bool) -> None:
    """Apply the pgdurable schema (idempotent: a second run changes nothing)."""
    if show_sql:
        click.echo(migrate.full_sql())
        return
    with friendly_errors(_verbose()):
        with connect(resolve_dsn(dsn)) as conn:
            applied = migrate.migrate(conn)
        if applied:
            for filename in applied.filenames:
                click.echo(f"applied {filename}")
        else:
            click.echo(f"schema is up to date (version {migrate.latest_version()})")


@main.command("dev")
@click.option("--stop", is_flag=True, help="Stop the embedded server instead.")
def dev_cmd(stop: bool) -> None:
    """Start (or reuse) the embedded PostgreSQL under ./.pgdurable and print its DSN.

    Data directory: $PGDURABLE_DATA_DIR/pg (default ./.pgdurable/pg). Use the DSN with
    `export PGDURABLE_DSN=...` or psql.
    """
    with friendly_errors(_verbose()):
        if stop:
            click.echo("stopped" if embedded.stop() else "not running")
            return
        click.echo(embedded.ensure_running())


@main.group("workflows")
def workflows() -> None:
    """Inspect and steer workflow runs."""


def _app(dsn: str | None, app_path: str | None = None) -> App:
    if app_path:
        app = load_app(app_path)
        if dsn:
            app.use_dsn(dsn)
        return app
    return App(dsn)


def load_app(path: str) -> App:
    """Import `module:attribute` (the attribute defaults to `app`) and return the App."""
    module_name, _, attr = path.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise click.ClickException(f"{path!r} is not a pgdurable.App (got {type(app).__name__})")
    return app


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
    with friendly_errors(_verbose()):
        with _app(dsn) as app:
            runs = app.list_workflows(status=status, name=name, limit=limit)
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
    with friendly_errors(_verbose()):
        with _app(dsn) as app:
            info = app.get_workflow(workflow_id)
            steps = app.list_steps(workflow_id)
        if as_json:
            data = _info_dict(info)
            data["steps"] = [s.model_dump(mode="json") for s in steps]
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"id:       {info.id}\nname:     {info.name}\nstatus:   {info.status}\n"
                   f"epoch:    {info.attempt}\nowner:    {info.owner or '-'}\n"
                   f"created:  {info.created_at}\nfinished: {info.finished_at or '-'}")
        if info.status == "pending" and info.available_at is not None:
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
@click.argument("workflow_id")
def workflows_cancel(dsn: str | None, workflow_id: str) -> None:
    """Cancel a run that has not finished."""
    with friendly_errors(_verbose()):
        with _app(dsn) as app:
            status = app.cancel(workflow_id)
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
    with friendly_errors(_verbose()):
        with _app(dsn, app_path) as app:
            if app_path is None:
                click.echo(f"{workflow_id}: {app.requeue(workflow_id)}")
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


@main.command("worker")
@dsn_option
@click.argument("app_path", metavar="MODULE:APP")
@click.option("-q", "--queue", "queues", multiple=True, envvar="PGDURABLE_QUEUES",
              show_envvar=True,
              help="Queue to serve (repeatable). Default: every queue the App declares, and "
              "'default'.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
              envvar="PGDURABLE_CONCURRENCY", show_envvar=True,
              help="Runs executed at the same time by this process.")
@click.option("--poll-interval", type=click.FloatRange(min=0.001), default=1.0,
              show_default=True, envvar="PGDURABLE_POLL_INTERVAL", show_envvar=True,
              help="Seconds between claims when idle (fallback behind NOTIFY).")
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              envvar="PGDURABLE_GRACE_SECONDS", show_envvar=True,
              help="On SIGTERM/SIGINT: time for running runs to finish before they are "
              "released back to their queue.")
@click.option("--exit-when-idle", is_flag=True, envvar="PGDURABLE_EXIT_WHEN_IDLE",
              show_envvar=True, help="Exit once nothing is claimable and nothing runs.")
@click.option("--recover", "embed_recovery", is_flag=True,
              help="Also run the recovery daemon (leader-elected) in this process.")
def worker_cmd(dsn: str | None, app_path: str, queues: tuple[str, ...], concurrency: int,
               poll_interval: float, grace_seconds: float, exit_when_idle: bool,
               embed_recovery: bool) -> None:
    """Run queued workflows of the App at MODULE:APP (e.g. myapp.tasks:app)."""
    from pgdurable.runtime.worker import Worker

    with friendly_errors(_verbose()):
        app = _app(dsn, app_path)
        worker = Worker(app, queues=list(queues) or None, concurrency=concurrency,
                        poll_interval=poll_interval, exit_when_idle=exit_when_idle,
                        grace_seconds=grace_seconds)

        def on_signal(signum: int, _frame: object) -> None:
            if worker._stopping.is_set():
                worker.grace_seconds = 0  # a second signal: release now
            worker.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if embed_recovery:
            from pgdurable.runtime.recovery import RecoveryDaemon

            daemon = RecoveryDaemon(app.db.dsn)
            threading.Thread(target=daemon.run, name="pgdurable-recovery", daemon=True).start()
        worker.run()
        click.echo(f"worker stopped: {worker.started} runs claimed, {worker.released} released",
                   err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Released runs may still have threads in the middle of a step; their writes are fenced.
    os._exit(0)


@main.command("recover")
@dsn_option
@json_option
@click.option("--once", is_flag=True, help="Run one sweep and exit (e.g. from cron).")
@click.option("--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Seconds between sweeps and between leadership attempts.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Most rows each part of a sweep touches.")
@click.option("--retention-days", type=click.FloatRange(min=0, min_open=True), default=7.0,
              show_default=True, help="Finished runs older than this are deleted.")
@click.option("--app", "app_path", metavar="MODULE:APP",
              help="Import this App first, so its queues and schedules are stored.")
def recover_cmd(dsn: str | None, as_json: bool, once: bool, interval: float, limit: int,
                retention_days: float, app_path: str | None) -> None:
    """The recovery daemon: requeue runs whose lease expired (dead-lettering those recovered
    too often), wake queues whose timers fired, fire cron schedules, delete old finished runs.
    Several daemons may run; one leads (advisory lock), the others stand by."""
    from pgdurable.runtime.recovery import RecoveryDaemon, RecoverySettings, sweep

    with friendly_errors(_verbose()):
        settings = RecoverySettings(interval=interval, limit=limit,
                                    retention_seconds=retention_days * 86400)
        if app_path:
            with _app(dsn, app_path) as app:
                app.db  # connect: stores the App's queues and schedules  # noqa: B018
                dsn = app.db.dsn
        target = resolve_dsn(dsn)
        if once:
            with connect(target) as conn:
                migrate.check_schema(conn)
                counts = sweep(conn, settings)
            if as_json:
                click.echo(json.dumps(counts))
            else:
                click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))
            return
        daemon = RecoveryDaemon(target, settings)
        signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
        signal.signal(signal.SIGINT, lambda *_: daemon.stop())
        if not _verbose():
            logging.getLogger("pgdurable").setLevel(logging.INFO)
        daemon.run()
        summary = {"sweeps": daemon.sweeps, **daemon.totals}
        click.echo(json.dumps(summary) if as_json else
                   " ".join(f"{k}={v}" for k, v in summary.items()), err=not as_json)


@main.group("queues", invoke_without_command=True)
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
    with friendly_errors(_verbose()):
        with _app(dsn) as app:
            rows = app.queue_stats()
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
    with friendly_errors(_verbose()):
        with _app(dsn) as app:
            app.pause_queue(name)
        click.echo(f"{name}: paused")


@queues_group.command("resume")
@dsn_option
@click.argument("name")
def queues_resume(dsn: str | None, name: str) -> None:
    """Let workers claim runs of a paused queue again."""
    with friendly_errors(_verbose()):
        with _app(dsn) as app:
            app.resume_queue(name)
        click.echo(f"{name}: active")


@main.group("schedules", invoke_without_command=True)
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
    with friendly_errors(_verbose()):
        with _app(dsn) as app:
            rows = app.list_schedules()
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


def _add_bench_command() -> None:
    """`pgdurable bench` lives in pgdurable/bench.py (scenarios, its own database)."""
    try:
        bench = importlib.import_module("pgdurable_bench")
    except ImportError:  # the bench module is optional while it is being built
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
