"""Helpers for the recovery tests: the SQL entry points with a movable clock, and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgdurable.core import cron

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
Conn = psycopg.Connection[Any]
Row = dict[str, Any]

# A Tuesday, in winter (UTC+1 in Europe/Paris).
T0 = datetime(2030, 1, 1, tzinfo=UTC)
NO_INPUTS: dict[str, Any] = {"args": [], "kwargs": {}}
# The advisory lock the recovery leader holds (pgdurable/sql/queries.sql: recovery_leader_lock).
LEADER_KEY = 7301544015412283462


def at(seconds: float) -> datetime:
    """T0 plus `seconds`."""
    return T0 + timedelta(seconds=seconds)


def minute(n: int) -> datetime:
    """T0 plus `n` minutes."""
    return T0 + timedelta(minutes=n)


def set_now(conn: Conn, when: datetime | None) -> None:
    """Move this session's `pgdurable.now()` (None: back to the wall clock)."""
    conn.execute("select set_config('pgdurable.now', %s, false)",
                 ("" if when is None else when.isoformat(),))


def call(conn: Conn, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def scalar(conn: Conn, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


@contextmanager
def sqlstate(code: str) -> Iterator[None]:
    """Expect the block to raise a database error with this SQLSTATE."""
    with pytest.raises(psycopg.Error) as info:
        yield
    assert info.value.sqlstate == code, f"expected {code}, got {info.value.sqlstate}: {info.value}"


# -- queues and runs ------------------------------------------------------------------------------


def declare_queue(conn: Conn, name: str, max_recoveries: int | None = None) -> None:
    conn.execute("select pgdurable.declare_queue(%s)", (name,))
    if max_recoveries is not None:
        conn.execute("select pgdurable.declare_queue_recoveries(%s, %s)", (name, max_recoveries))


def enqueue(conn: Conn, queue: str = "default", name: str = "flow", wid: str | None = None,
            delay: float = 0.0, inputs: dict[str, Any] | None = None) -> str:
    return str(scalar(
        conn, "select pgdurable.enqueue(p_queue => %s, p_name => %s, p_inputs => %s, "
              "p_id => %s, p_delay_seconds => %s)",
        (queue, name, Jsonb(inputs or NO_INPUTS), wid, delay)))


def claim(conn: Conn, worker: str, queues: list[str] | str = "default", max_runs: int = 10,
          lease: float = 30.0) -> list[Row]:
    qs = [queues] if isinstance(queues, str) else queues
    return call(conn, "select * from pgdurable.claim(%s, %s, %s, %s)",
                (worker, qs, max_runs, lease))


def claim_one(conn: Conn, worker: str, queue: str = "default", lease: float = 30.0) -> Row:
    rows = claim(conn, worker, queue, 1, lease)
    assert len(rows) == 1, f"{worker} claimed {rows}"
    return rows[0]


def expire(conn: Conn, queues: list[str] | None = None, limit: int = 100) -> tuple[int, int]:
    """pgdurable.expire_leases: (requeued, dead_lettered)."""
    row = call(conn, "select * from pgdurable.expire_leases(%s, %s)", (queues, limit))[0]
    return int(row["requeued"]), int(row["dead_lettered"])


def sweep(conn: Conn, limit: int = 100, retention: float = 86400.0) -> dict[str, int]:
    counts: dict[str, int] = scalar(conn, "select pgdurable.recover_sweep(%s, %s)",
                                    (limit, retention))
    return counts


def finish(conn: Conn, wid: str, epoch: int, status: str = "succeeded", output: Any = None
           ) -> None:
    conn.execute("select pgdurable.finish_workflow(%s, %s, %s, %s, null)",
                 (wid, epoch, status, None if output is None else Jsonb(output)))


def record(conn: Conn, wid: str, epoch: int, step_no: int, output: Any = None) -> Row:
    return call(conn, "select * from pgdurable.record_step(%s, %s, %s, 'step', 'done', %s, null)",
                (wid, epoch, step_no, Jsonb(output)))[0]


def workflow(conn: Conn, wid: str) -> Row:
    rows = call(conn, "select * from pgdurable.workflows where id = %s", (wid,))
    assert len(rows) == 1, f"no workflow {wid!r}"
    return rows[0]


def notifications(listener: Conn, timeout: float = 0.2, expect: int | None = None) -> list[str]:
    """Notifications received within `timeout` (returning early once `expect` arrived)."""
    return [n.payload for n in listener.notifies(timeout=timeout, stop_after=expect)]


def ready_ids(conn: Conn) -> set[str]:
    return {str(r[0]) for r in conn.execute("select workflow_id from pgdurable.ready")}


def count(conn: Conn, table: str) -> int:
    return int(scalar(conn, f"select count(*) from {table}"))


# -- schedules ------------------------------------------------------------------------------------


def declare_schedule(conn: Conn, name: str, expression: str, *, workflow_name: str = "flow",
                     queue: str = "default", inputs: Any = None, timezone: str = "UTC",
                     catch_up: bool = False) -> None:
    """pgdurable.declare_schedule with the sets parsed as the Python client does."""
    spec = cron.parse(expression)
    conn.execute(
        "select pgdurable.declare_schedule(%s, %s, %s, %s, %s, %s, %s, %s::smallint[], "
        "%s::smallint[], %s::smallint[], %s::smallint[], %s::smallint[], %s, %s)",
        (name, expression, workflow_name, queue, Jsonb(NO_INPUTS if inputs is None else inputs),
         timezone, catch_up, list(spec.minutes), list(spec.hours), list(spec.days),
         list(spec.months), list(spec.weekdays), spec.days_restricted,
         spec.weekdays_restricted))


def fire(conn: Conn, limit: int = 1000) -> int:
    return int(scalar(conn, "select pgdurable.fire_schedules(%s)", (limit,)))


def tick_id(name: str, tick: datetime) -> str:
    return f"schedule:{name}:{tick.astimezone(UTC):%Y-%m-%dT%H:%MZ}"


def scheduled_ids(conn: Conn, name: str | None = None) -> list[str]:
    prefix = "schedule:" + (f"{name}:" if name else "")
    rows = conn.execute("select id from pgdurable.workflows where starts_with(id, %s) "
                        "order by id", (prefix,))
    return [str(r[0]) for r in rows]


def last_tick(conn: Conn, name: str) -> datetime:
    value: datetime = scalar(conn, "select last_tick from pgdurable.schedules where name = %s",
                             (name,))
    return value


# -- waiting and processes ------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.02,
               what: str = "the condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cli_env(dsn: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGDURABLE")}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(HERE), "COLUMNS": "200", **extra})
    if dsn is not None:
        env["PGDURABLE_DSN"] = dsn
    return env


def cli(dsn: str | None, *args: str, timeout: float = 60.0, **env: str
        ) -> subprocess.CompletedProcess[str]:
    """Run `python -m pgdurable.cli ARGS...` against `dsn` and wait for it."""
    return subprocess.run([sys.executable, "-m", "pgdurable.cli", *args], cwd=HERE,
                          env=cli_env(dsn, **env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the CLI failed the friendly way (exit 1, one line on stderr) and return it."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class Proc:
    """A long-running `python -m pgdurable.cli ...` process; its output goes to files, so it
    can be read while the process runs (and no pipe fills up)."""

    def __init__(self, dsn: str, logdir: Path, label: str, *args: str, **env: str) -> None:
        self.label = label
        self.out_path = logdir / f"{label}.out"
        self.err_path = logdir / f"{label}.err"
        self._out = self.out_path.open("w")
        self._err = self.err_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgdurable.cli", *args], cwd=HERE,
            env=cli_env(dsn, PGAPPNAME=label, **env), stdout=self._out, stderr=self._err,
        )
        self.pid = self.proc.pid

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._out.close()
        self._err.close()


@contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects processes and kills any still alive when the test ends."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.close()


def leader(conn: Conn) -> str | None:
    """The application_name of the session holding the recovery leader lock in this database."""
    row = conn.execute(
        "select a.application_name from pg_locks l join pg_stat_activity a using (pid) "
        "where l.locktype = 'advisory' and l.granted and l.classid = %s and l.objid = %s "
        "and l.objsubid = 1 "
        "and l.database = (select oid from pg_database where datname = current_database())",
        (LEADER_KEY >> 32, LEADER_KEY & 0xFFFFFFFF),
    ).fetchone()
    return None if row is None else str(row[0])


def wait_for_leader(conn: Conn, timeout: float = 20.0) -> str:
    """Wait until some session holds the leader lock; its application_name."""
    name = wait_until(lambda: leader(conn), timeout=timeout, what="a recovery leader")
    assert name is not None
    return name


def backends(conn: Conn, application_name: str) -> list[int]:
    rows = conn.execute("select pid from pg_stat_activity where application_name = %s "
                        "and datname = current_database()", (application_name,))
    return [int(r[0]) for r in rows]


def terminate(conn: Conn, application_name: str) -> int:
    """pg_terminate_backend every session of that application name in this database."""
    pids = backends(conn, application_name)
    for pid in pids:
        conn.execute("select pg_terminate_backend(%s)", (pid,))
    return len(pids)
