"""Small helpers for calling the PL/pgSQL functions directly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]
Row = dict[str, Any]

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NO_INPUTS: dict[str, Any] = {"args": [], "kwargs": {}}


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


def start(
    conn: Conn,
    wid: str = "w1",
    name: str = "flow",
    owner: str = "worker-a",
    lease: float | None = 30.0,
    inputs: Any = None,
) -> Row:
    rows = call(
        conn,
        "select * from pgdurable.start_workflow(%s, %s, %s, %s, %s)",
        (wid, name, Jsonb(NO_INPUTS if inputs is None else inputs), owner, lease),
    )
    assert len(rows) == 1
    return rows[0]


def acquire(conn: Conn, wid: str, owner: str, lease: float | None = 30.0) -> list[Row]:
    return call(conn, "select * from pgdurable.acquire(%s, %s, %s)", (wid, owner, lease))


def resume(conn: Conn, wid: str, owner: str, lease: float | None = 30.0) -> list[Row]:
    return call(conn, "select * from pgdurable.resume(%s, %s, %s)", (wid, owner, lease))


def heartbeat(
    conn: Conn, owner: str, lease: float | None = 30.0, ids: list[str] | None = None
) -> int:
    """Renew `ids` (default: every run `owner` holds, as a worker executing all of them)."""
    if ids is None:
        ids = [r[0] for r in conn.execute(
            "select id from pgdurable.workflows where owner = %s", (owner,)).fetchall()]
    rows = call(conn, "select pgdurable.heartbeat(%s, %s, %s) as n", (owner, ids, lease))
    return int(rows[0]["n"])


def record(
    conn: Conn,
    wid: str,
    epoch: int | None,
    step_no: int,
    name: str,
    status: str | None = "done",
    output: Any = None,
    error: Any = None,
) -> Row:
    rows = call(
        conn,
        "select * from pgdurable.record_step(%s, %s, %s, %s, %s, %s, %s)",
        (wid, epoch, step_no, name, status, _jsonb(output), _jsonb(error)),
    )
    assert len(rows) == 1
    return rows[0]


def begin(conn: Conn, wid: str, epoch: int, step_no: int, name: str) -> Row:
    rows = call(
        conn, "select * from pgdurable.begin_step(%s, %s, %s, %s)", (wid, epoch, step_no, name)
    )
    assert len(rows) == 1
    return rows[0]


def finish(
    conn: Conn,
    wid: str,
    epoch: int | None,
    status: str | None = "succeeded",
    output: Any = None,
    error: Any = None,
) -> None:
    conn.execute(
        "select pgdurable.finish_workflow(%s, %s, %s, %s, %s)",
        (wid, epoch, status, _jsonb(output), _jsonb(error)),
    )


def cancel(conn: Conn, wid: str) -> str:
    return str(call(conn, "select pgdurable.cancel(%s) as s", (wid,))[0]["s"])


def load_steps(conn: Conn, wid: str, epoch: int) -> list[Row]:
    return call(conn, "select * from pgdurable.load_steps(%s, %s)", (wid, epoch))


def workflow(conn: Conn, wid: str) -> Row:
    rows = call(conn, "select * from pgdurable.workflows where id = %s", (wid,))
    assert len(rows) == 1, f"no workflow {wid!r}"
    return rows[0]


def steps(conn: Conn, wid: str) -> list[Row]:
    return call(
        conn, "select * from pgdurable.steps where workflow_id = %s order by step_no", (wid,)
    )


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


@contextmanager
def sqlstate(code: str) -> Iterator[None]:
    """Expect the block to raise a database error with this SQLSTATE."""
    with pytest.raises(psycopg.Error) as info:
        yield
    assert info.value.sqlstate == code, f"expected {code}, got {info.value.sqlstate}: {info.value}"


class Blocked:
    """Run `fn(conn)` on its own connection in a thread, for statements expected to wait on a
    lock. `pid` is that connection's backend, to look up in pg_stat_activity."""

    def __init__(self, dsn: str, fn: Callable[[Conn], Any]) -> None:
        self.conn: Conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("set lock_timeout = '30s'")
        self.pid = self.conn.info.backend_pid
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._fn(self.conn)
        except BaseException as exc:
            self.error = exc

    def start(self) -> Blocked:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 30.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the blocked statement never finished"
        if self.error is not None:
            raise self.error
        return self.result

    def close(self) -> None:
        if self._thread.is_alive():
            self.conn.cancel_safe()
            self._thread.join(10)
        self.conn.close()


def wait_for_lock_wait(observer: Conn, blocked: Blocked, timeout: float = 15.0) -> None:
    """Poll pg_stat_activity until `blocked`'s backend waits on a heavyweight lock."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        row = observer.execute(
            "select wait_event_type, wait_event, state from pg_stat_activity where pid = %s",
            (blocked.pid,),
        ).fetchone()
        seen = row
        if row is not None and row[0] == "Lock":
            return
        if not blocked.running:
            outcome = blocked.error if blocked.error is not None else blocked.result
            pytest.fail(f"the statement did not wait on a lock; it finished with {outcome!r}")
        time.sleep(0.005)
    pytest.fail(f"backend {blocked.pid} never waited on a lock (last seen: {seen})")


def catalog(conn: Conn, *, skip_tables: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """Everything pgdurable puts in the catalog, in a comparable form."""
    skip = list(skip_tables)
    queries = {
        "functions": """
            select p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.provolatile
              from pg_proc p where p.pronamespace = 'pgdurable'::regnamespace order by 1""",
        "comments": """
            select p.oid::regprocedure::text, d.description
              from pg_proc p join pg_description d
                on d.objoid = p.oid and d.classoid = 'pg_proc'::regclass and d.objsubid = 0
             where p.pronamespace = 'pgdurable'::regnamespace order by 1""",
        "relations": """
            select c.relname, c.relkind, c.reloptions from pg_class c
             where c.relnamespace = 'pgdurable'::regnamespace
               and not (c.relname = any(%(skip)s))
               and not exists (select from pg_index i join pg_class t on t.oid = i.indrelid
                                where i.indexrelid = c.oid and t.relname = any(%(skip)s))
             order by 1""",
        "columns": """
            select table_name, column_name, ordinal_position, data_type, is_nullable,
                   column_default
              from information_schema.columns
             where table_schema = 'pgdurable' and not (table_name = any(%(skip)s))
             order by 1, 3""",
        "constraints": """
            select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
              from pg_constraint where connamespace = 'pgdurable'::regnamespace
               and not (conrelid::regclass::text = any(
                        select 'pgdurable.' || t from unnest(%(skip)s::text[]) t))
             order by 1, 2""",
        "indexes": """
            select tablename, indexname, indexdef from pg_indexes
             where schemaname = 'pgdurable' and not (tablename = any(%(skip)s)) order by 2""",
        "triggers": """
            select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger
             where not tgisinternal
               and tgrelid in (select oid from pg_class
                                where relnamespace = 'pgdurable'::regnamespace)
             order by 1, 2""",
    }
    return {
        key: [tuple(r.values()) for r in call(conn, sql, {"skip": skip})]
        for key, sql in queries.items()
    }
