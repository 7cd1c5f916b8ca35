"""`pgdurable worker` and `pgdurable recover`: the processes that run and recover workflows."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import click

from pgdurable.cli.common import dsn_option, friendly_errors, json_option, open_app, verbose
from pgdurable.dev.config import resolve_dsn
from pgdurable.store import migrate
from pgdurable.store.database import connect


@click.command("worker")
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
    from pgdurable.api.worker import Worker

    with friendly_errors(verbose()):
        app = open_app(dsn, app_path)
        worker = Worker(app, queues=list(queues) or None, concurrency=concurrency,
                        poll_interval=poll_interval, exit_when_idle=exit_when_idle,
                        grace_seconds=grace_seconds, recover=embed_recovery)

        def on_signal(signum: int, _frame: object) -> None:
            if worker.stopping:
                worker.grace_seconds = 0  # a second signal: release now
            worker.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        worker.run()
        click.echo(f"worker stopped: {worker.started} runs claimed, {worker.released} released",
                   err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Released runs may still have threads in the middle of a step; their writes are fenced.
    os._exit(0)


@click.command("recover")
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

    with friendly_errors(verbose()):
        settings = RecoverySettings(interval=interval, limit=limit,
                                    retention_seconds=retention_days * 86400)
        if app_path:
            with open_app(dsn, app_path) as app:
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
        if not verbose():
            logging.getLogger("pgdurable").setLevel(logging.INFO)
        daemon.run()
        summary = {"sweeps": daemon.sweeps, **daemon.totals}
        click.echo(json.dumps(summary) if as_json else
                   " ".join(f"{k}={v}" for k, v in summary.items()), err=not as_json)
