"""`pgdurable bench`: throughput and latency of pgdurable against a raw-SQL yardstick measured in
the same run, on the same server.

The bench creates a database of its own (`pgdurable_bench_<pid>_<random>`) on the server the
DSN points at, migrates it, runs the scenarios (pgdurable/bench_scenarios.py) and drops it at
the end, also after an error or Ctrl-C. It never touches any other database.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import secrets
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
from click._termui_impl import ProgressBar
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from pgdurable import __version__
from pgdurable.core.errors import PgDurableError
from pgdurable.dev.config import resolve_dsn
from pgdurable.store import migrate
from pgdurable.store.database import connect
from pgdurable_bench import backlog as bench_backlog
from pgdurable_bench import fanout as bench_fanout
from pgdurable_bench.app import build
from pgdurable_bench.measure import BenchError, Processes
from pgdurable_bench.report import rounded, summarize, table
from pgdurable_bench.scenarios import (
    BASELINE,
    NEEDS_BASELINE,
    SCENARIOS,
    Env,
    Line,
    Scenario,
    Settings,
    child_env,
    planned_lines,
)
from pgdurable_bench.sql import sql

T = TypeVar("T")

# Every scenario, in the order they run. `backlog` (a million-row fill and a minute of held
# xmin per run) and `fanout` (11,000 children per run) run only when named; the others are the
# default.
DEFAULT_SCENARIOS = list(SCENARIOS)
ALL_SCENARIOS: dict[str, Scenario] = {**SCENARIOS, bench_backlog.SCENARIO: bench_backlog.backlog,
                                      bench_fanout.SCENARIO: bench_fanout.fanout}


class OneLineErrors(click.Command):
    """Bad options and arguments are reported as one `Error: ...` line, like every other
    failure of the command, instead of click's usage block."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise click.ClickException(exc.format_message()) from None


def plan(selected: Sequence[str]) -> list[str]:
    """The scenarios to run, in their canonical order; the yardstick joins whenever a
    scenario is compared with it."""
    wanted = set(selected or DEFAULT_SCENARIOS)
    if wanted & NEEDS_BASELINE:
        wanted.add(BASELINE)
    return [name for name in ALL_SCENARIOS if name in wanted]


def _planned(name: str, settings: Settings) -> int:
    if name == bench_backlog.SCENARIO:
        return bench_backlog.LINES
    if name == bench_fanout.SCENARIO:
        return 2 * len(settings.fanout_children)
    return planned_lines(name, settings)


# -- the bench database -------------------------------------------------------------------------


def _server_info(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql("server_info")).fetchone()
    return dict(row or {})


def _machine_info(load_before: tuple[float, float, float]) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # Load averages tell a reader whether something else ran on the machine meanwhile.
    return {"nproc": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "pgdurable": __version__,
            "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())}


def _database_statement(name: str, db: str) -> pgsql.Composed:
    return pgsql.SQL(sql(name)).format(name=pgsql.Identifier(db))


@contextmanager
def bench_database(server_dsn: str) -> Iterator[tuple[str, str]]:
    """Create and migrate a database of our own; drop it afterwards, whatever happened.
    Yields its name and DSN."""
    db = f"pgdurable_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with connect(server_dsn) as conn:
        conn.execute(_database_statement("create_database", db))
    try:
        dsn = make_conninfo(server_dsn, dbname=db)
        with connect(dsn) as conn:
            migrate.migrate(conn)
            conn.execute(sql("create_tables"))
        yield db, dsn
    finally:
        # A fresh connection: the one above may be unusable after an interrupt.
        with connect(server_dsn) as conn:
            conn.execute(_database_statement("drop_database", db))


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the bench database is dropped either way."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread (e.g. under a test runner's thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- running ------------------------------------------------------------------------------------


def run(settings: Settings, scenarios: Sequence[str], server_dsn: str
        ) -> tuple[dict[str, Any], list[list[Line]]]:
    """Run every scenario `settings.repeat` times (interleaved, so drift hits all of them
    alike) in a fresh bench database. Returns the server description and the lines per run."""
    with connect(server_dsn) as conn:
        server = _server_info(conn)
    total = settings.repeat * sum(_planned(name, settings) for name in scenarios)
    with sigterm_as_interrupt(), bench_database(server_dsn) as (db, dsn):
        server["database"] = db
        bench = build(dsn)
        procs = Processes(child_env(dsn))
        try:
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
                conn.execute(sql("session_setup"))
                env = Env(settings, dsn, conn, bench, procs)
                bench.connect()
                with progress_bar(env, total):
                    runs = [_one_run(env, scenarios) for _ in range(settings.repeat)]
                server["checkpoint_before_each"] = env.checkpoints
        finally:
            procs.kill_all()
            bench.app.close(wait=False)
    return server, runs


def _one_run(env: Env, scenarios: Sequence[str]) -> list[Line]:
    return [line for name in scenarios for line in ALL_SCENARIOS[name](env)]


@contextmanager
def progress_bar(env: Env, total: int) -> Iterator[None]:
    """A progress bar on stderr (stdout stays clean for --json), advanced once per
    measurement and labelled with the one running."""
    bar: ProgressBar[int]
    with click.progressbar(length=total, label="bench", file=sys.stderr, show_pos=True) as bar:
        live = sys.stderr.isatty()

        def begin(name: str) -> None:
            bar.label = f"{name:<22}"
            bar.render_progress()

        def tick(text: str) -> None:
            if live:  # a log file gets one line per measurement, not one per poll
                bar.label = f"{text:<22}"
                bar.render_progress()

        env.begin, env.tick, env.end = begin, tick, lambda: bar.update(1)
        yield


# -- the command --------------------------------------------------------------------------------


def _header(settings: Settings, server: dict[str, Any], machine: dict[str, Any],
            scenarios: Sequence[str]) -> list[str]:
    runs = f"median of {settings.repeat} runs" if settings.repeat > 1 else "1 run"
    steps = "0/1/3" if settings.steps is None else str(settings.steps)
    backlog = (f" backlog-rows={settings.backlog_rows} xmin-seconds={settings.xmin_seconds}"
               if bench_backlog.SCENARIO in scenarios else "")
    return [
        f"pgdurable bench: n={settings.n} workers={settings.workers} "
        f"concurrency={settings.concurrency} steps={steps} payload={settings.payload_bytes} B"
        f"{backlog} ({runs})",
        f"PostgreSQL {server.get('server_version')} (fsync={server.get('fsync')}, "
        f"synchronous_commit={server.get('synchronous_commit')}), "
        f"{machine['nproc']} CPUs ({machine['cpu']}), Python {machine['python']}",
    ]


def _command_line() -> str:
    """How the bench was invoked, without the DSN (it may hold a password)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--dsn":
            skip = True
        elif not arg.startswith("--dsn="):
            args.append(arg)
    return " ".join(["pgdurable", *args])


def _friendly(verbose: bool, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (BenchError, PgDurableError, psycopg.Error, OSError) as exc:
        if verbose:
            raise
        message = " ".join(str(exc).split())
        if isinstance(exc, psycopg.Error):
            message = f"{type(exc).__name__}: {message}"
        raise click.ClickException(message) from None


@click.command("bench", cls=OneLineErrors)
@click.argument("scenarios", nargs=-1, metavar="[SCENARIO]...",
                type=click.Choice(list(ALL_SCENARIOS)))
@click.option("--dsn", envvar="PGDURABLE_DSN", show_envvar=True,
              help="Server to benchmark on (any database of it: the bench creates and drops "
              "its own). Default: libpq PG* variables, else the embedded server.")
@click.option("--n", "n", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Jobs (runs, rows or steps) per measurement.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for queued scenarios and the baseline.")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
              help="Runs at a time per worker process (and baseline threads per process).")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="No-op steps per workflow: queue runs this instead of 0, 1 and 3; direct "
              "uses it when > 0 (default 10).")
@click.option("--payload-bytes", type=click.IntRange(min=0, max=10_000_000), default=0,
              show_default=True, help="Size of the string argument each run gets.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run every scenario this many times; report the median (and min-max).")
@click.option("--backlog-rows", type=click.IntRange(min=1), default=1_000_000,
              show_default=True,
              help="backlog: runs standing queued (behind the measured ones) in its second line.")
@click.option("--xmin-seconds", type=click.IntRange(min=1), default=60, show_default=True,
              help="backlog: how long a snapshot is held open (the workload repeats meanwhile) "
              "in its third line.")
@click.option("--children", "fanout_children", type=click.IntRange(min=1), multiple=True,
              help="fanout: children of the parent, one pair of lines per value (repeatable; "
              "default 1000 and 10000).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Also write the JSON report to this file.")
def bench_command(scenarios: tuple[str, ...], dsn: str | None, n: int, workers: int,
                  concurrency: int, steps: int | None, payload_bytes: int, repeat: int,
                  backlog_rows: int, xmin_seconds: int, fanout_children: tuple[int, ...],
                  as_json: bool, out: Path | None) -> None:
    """Benchmark pgdurable against raw SQL on the same server.

    SCENARIO: baseline-sql, enqueue, queue, direct, transaction, latency (default: all of
    these), backlog (only when named: it fills a million-row backlog and holds xmin for a
    minute, per run), fanout (only when named: one parent joins 1,000 and 10,000 children).
    Every line states its ratio to the yardstick of the same run:
    baseline-sql (the same enqueue -> claim -> complete lifecycle in plain SQL), a raw INSERT
    (enqueue), a raw one-commit-per-step loop (direct), a raw LISTEN loop (latency), the
    same workload on fresh tables (backlog), or the same number of runs enqueued with
    enqueue_many and drained (fanout).
    """
    root = click.get_current_context().find_root().obj
    verbose = bool(root.get("verbose")) if isinstance(root, dict) else False
    settings = Settings(n, workers, concurrency, steps, payload_bytes, repeat,
                        backlog_rows=backlog_rows, xmin_seconds=xmin_seconds,
                        fanout_children=fanout_children or bench_fanout.SIZES)
    if out is not None and not out.parent.is_dir():  # fail now, not after the whole run
        raise click.ClickException(f"--out {out}: directory {out.parent} does not exist")
    chosen = plan(scenarios)
    load_before = os.getloadavg()
    server, runs = _friendly(verbose, lambda: run(settings, chosen, resolve_dsn(dsn)))
    machine = _machine_info(load_before)
    summary = summarize(runs)
    report = {
        "command": _command_line(),
        "settings": {**dataclasses.asdict(settings), "scenarios": chosen},
        "server": server,
        "machine": machine,
        "results": rounded(summary),
    }
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(table(summary, _header(settings, server, machine, chosen)))
