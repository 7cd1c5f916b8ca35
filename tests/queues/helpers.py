"""Helpers for the queue tests: calling the SQL functions, running worker processes, waiting."""

from __future__ import annotations

import os
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

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
Conn = psycopg.Connection[Any]
Row = dict[str, Any]

T0 = datetime(2030, 1, 1, tzinfo=UTC)

# The tables the workflows of apps/qapp.py write to.
QAPP_SCHEMA = """
create table qruns (
    id bigserial primary key, workflow_id text not null, pid integer not null,
    started timestamptz not null, ended timestamptz);
create table qflags (tag text primary key);
"""


def at(seconds: float) -> datetime:
    """T0 plus `seconds`."""
    return T0 + timedelta(seconds=seconds)


def set_now(conn: Conn, when: datetime | None) -> None:
    """Move this session's `pgdurable.now()` (None: back to the wall clock)."""
    conn.execute(
        "select set_config('pgdurable.now', %s, false)",
        ("" if when is None else when.isoformat(),),
    )


def call(conn: Conn, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def _named(fn: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`select pgdurable.fn(p_a => %(a)s, ...)` for keyword arguments."""
    params = {k: Jsonb(v) if k == "inputs" and not isinstance(v, Jsonb) else v
              for k, v in args.items()}
    sql = ", ".join(f"p_{k} => %({k})s" for k in args)
    return f"pgdurable.{fn}({sql})", params


def declare(conn: Conn, name: str, **limits: Any) -> None:
    """pgdurable.declare_queue with keyword limits (concurrency=, rate_limit=, ...)."""
    expr, params = _named("declare_queue", {"name": name, **limits})
    call(conn, f"select {expr}", params)


def enqueue(conn: Conn, queue: str, name: str = "flow", **options: Any) -> str:
    """pgdurable.enqueue with keyword options (id=, priority=, delay_seconds=, ...)."""
    args: dict[str, Any] = {"queue": queue, "name": name, **options}
    expr, params = _named("enqueue", args)
    return str(call(conn, f"select {expr} as id", params)[0]["id"])


def enqueue_many(conn: Conn, queue: str, name: str, inputs: list[Any], **options: Any
                 ) -> list[str]:
    args: dict[str, Any] = {"queue": queue, "name": name,
                            "inputs": [Jsonb(i) for i in inputs], **options}
    params = dict(args)
    cols = ", ".join(
        f"p_{k} => %({k})s" + ("::jsonb[]" if k == "inputs" else "::text[]" if k == "ids" else "")
        for k in args
    )
    return [str(r["id"]) for r in call(conn, f"select id from pgdurable.enqueue_many({cols})",
                                       params)]


def claim(conn: Conn, worker: str, queues: list[str] | str, max_runs: int = 10,
          lease: float = 30.0, names: list[str] | None = None) -> list[Row]:
    """Claim for `worker` (expired leases are requeued first, as a worker's sweep does)."""
    qs = [queues] if isinstance(queues, str) else queues
    return call(conn, "select * from pgdurable.claim(%s, %s, %s, %s, %s)",
                (worker, qs, max_runs, lease, names))


def claim_ids(conn: Conn, worker: str, queues: list[str] | str, max_runs: int = 10,
              **kw: Any) -> list[str]:
    return [str(r["id"]) for r in claim(conn, worker, queues, max_runs, **kw)]


def requeue_expired(conn: Conn, queues: list[str] | None = None, limit: int = 100) -> int:
    return int(call(conn, "select pgdurable.requeue_expired(%s, %s) as n",
                    (queues, limit))[0]["n"])


def finish(conn: Conn, wid: str, epoch: int, status: str = "succeeded", output: Any = None,
           error: Any = None) -> None:
    conn.execute(
        "select pgdurable.finish_workflow(%s, %s, %s, %s, %s)",
        (wid, epoch, status, None if output is None else Jsonb(output),
         None if error is None else Jsonb(error)),
    )


def record(conn: Conn, wid: str, epoch: int, step_no: int, name: str, status: str = "done",
           output: Any = None, error: Any = None) -> Row:
    return call(
        conn, "select * from pgdurable.record_step(%s, %s, %s, %s, %s, %s, %s)",
        (wid, epoch, step_no, name, status, None if output is None else Jsonb(output),
         None if error is None else Jsonb(error)),
    )[0]


def workflow(conn: Conn, wid: str) -> Row:
    rows = call(conn, "select * from pgdurable.workflows where id = %s", (wid,))
    assert len(rows) == 1, f"no workflow {wid!r}"
    return rows[0]


def ready_ids(conn: Conn, queue: str | None = None) -> set[str]:
    rows = call(conn, "select workflow_id from pgdurable.ready where %(q)s::text is null "
                      "or queue = %(q)s", {"q": queue})
    return {str(r["workflow_id"]) for r in rows}


def count(conn: Conn, table: str) -> int:
    return int(call(conn, f"select count(*) as n from {table}")[0]["n"])


@contextmanager
def sqlstate(code: str, conn: Conn | None = None) -> Iterator[None]:
    """Expect the block to raise a database error with this SQLSTATE. With `conn`, the block
    runs in a savepoint of it, so an enclosing transaction stays usable."""
    with pytest.raises(psycopg.Error) as info:
        if conn is None:
            yield
        else:
            with conn.transaction():
                yield
    assert info.value.sqlstate == code, f"expected {code}, got {info.value.sqlstate}: {info.value}"


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


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of half-open intervals [start, end) covering one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # ends before starts at the same instant
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def max_in_window(starts: list[datetime], seconds: float) -> int:
    """The largest number of starts in any half-open window [t, t + seconds)."""
    ordered = sorted(starts)
    width = timedelta(seconds=seconds)
    best = 0
    j = 0
    for i, start in enumerate(ordered):
        j = max(j, i)
        while j < len(ordered) and ordered[j] < start + width:
            j += 1
        best = max(best, j - i)
    return best


# -- worker processes ---------------------------------------------------------------------------


class WorkerProc:
    """One `python -m pgdurable.cli worker MODULE:APP ...` process."""

    def __init__(self, dsn: str, app_path: str, *args: str, **env: str) -> None:
        full_env = {**os.environ, "PGDURABLE_DSN": dsn, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": str(HERE), **env}
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgdurable.cli", "worker", app_path, *args],
            cwd=HERE, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.pid = self.proc.pid

    def wait(self, timeout: float = 30.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)
        assert self.proc.returncode == -9

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@contextmanager
def worker_procs() -> Iterator[list[WorkerProc]]:
    """Collects worker processes and kills any still alive when the test ends."""
    started: list[WorkerProc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


def cli(dsn: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m pgdurable.cli ARGS...` against `dsn`."""
    env = {**os.environ, "PGDURABLE_DSN": dsn}
    return subprocess.run([sys.executable, "-m", "pgdurable.cli", *args], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=timeout)
