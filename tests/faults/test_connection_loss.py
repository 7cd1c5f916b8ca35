"""Connection loss: connections killed with pg_terminate_backend, and PostgreSQL restarted in
immediate mode. Workers and the recovery daemon reconnect with backoff and carry on without
operator action."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

import pgdurable
from tests.support.processes import LEADER_KEY, Proc, holder_of, processes
from tests.support.waiting import wait_until

from .helpers import TORTURE_SCHEMA, worker
from .restart import connect, restartable_database

Conn = psycopg.Connection[Any]
WORKER_ARGS = ("--queue", "torture", "--concurrency", "4")


def enqueue_flows(conn: Conn, first: int, count: int) -> list[str]:
    rows = conn.execute(
        "select pgdurable.enqueue('torture', 'torture.flow', jsonb_build_object('args', "
        "jsonb_build_array(n), 'kwargs', '{}'::jsonb), 'flow-' || n) "
        "from generate_series(%s::int, %s::int) n", (first, first + count - 1)).fetchall()
    return [str(r[0]) for r in rows]


def statuses(conn: Conn, ids: list[str]) -> dict[str, str]:
    rows = conn.execute("select id, status from pgdurable.workflows where id = any(%s)", (ids,))
    return {str(i): str(s) for i, s in rows.fetchall()}


def succeeded(conn: Conn, ids: list[str]) -> bool:
    return set(statuses(conn, ids).values()) == {"succeeded"}


def check_outcomes(conn: Conn, ids: list[str]) -> None:
    """Every run succeeded with exactly one business row, the one its output names."""
    for wid, output in conn.execute(
            "select id, output from pgdurable.workflows where id = any(%s)", (ids,)).fetchall():
        rows = conn.execute("select id from torture_business where n = %s",
                            (output["n"],)).fetchall()
        assert rows == [(output["business_id"],)], f"{wid}: {rows} vs {output}"


def sessions(conn: Conn, application_name: str, query: str | None = None) -> set[int]:
    rows = conn.execute(
        "select pid from pg_stat_activity where application_name = %s "
        "and datname = current_database() and (%s::text is null or query = %s)",
        (application_name, query, query)).fetchall()
    return {int(r[0]) for r in rows}


def kill_sessions(conn: Conn, application_name: str) -> set[int]:
    """pg_terminate_backend every session of `application_name`; wait until they are gone."""
    pids = sessions(conn, application_name)
    for pid in pids:
        conn.execute("select pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: not pids & sessions(conn, application_name), timeout=20,
               what="the killed sessions to end")
    return pids


def test_a_worker_continues_after_its_connections_are_killed(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    """Between batches, every session of the worker (pool and listener) is terminated; the
    next batch still runs. With a 30 s poll interval, it runs quickly only if the listener
    reconnected and NOTIFY wakes the worker again."""
    conn.execute(TORTURE_SCHEMA)
    conn.execute("select pgdurable.declare_queue('torture')")
    with processes() as procs:
        proc = worker(dsn, tmp_path, "victim", *WORKER_ARGS, "--poll-interval", "30",
                      TORTURE_TXN_SECONDS="0", TORTURE_STEP_SECONDS="0")
        procs.append(proc)
        first = enqueue_flows(conn, 1, 8)
        wait_until(lambda: succeeded(conn, first), timeout=60, what="the first batch")
        ids = list(first)
        for batch in range(3):
            killed = kill_sessions(conn, "victim")
            assert len(killed) >= 2, "expected the pool and the listener to be connected"
            wait_until(lambda: sessions(conn, "victim", "listen pgdurable"), timeout=20,
                       what="the listener to reconnect")
            more = enqueue_flows(conn, 100 * (batch + 1), 10)
            wait_until(functools.partial(succeeded, conn, more), timeout=20,
                       what=f"batch {batch} after the kill")
            ids += more
        assert proc.alive(), proc.stderr()
    check_outcomes(conn, ids)


@pytest.fixture
def held_transaction(app: pgdurable.App, conn: Conn) -> Iterator[tuple[Any, threading.Event]]:
    conn.execute("create table business (n integer not null)")
    release = threading.Event()

    @app.transaction(name="book")
    def book(txn: psycopg.Connection[Any], n: int) -> int:
        txn.execute("insert into business values (%s)", (n,))
        release.wait(30)
        txn.execute("select 1")  # the connection was killed meanwhile
        return n

    @app.workflow(name="booking")
    def booking(n: int) -> int:
        return book(n)

    yield booking, release
    release.set()


def test_a_transaction_step_survives_its_connection_being_killed(
    app: pgdurable.App, conn: Conn, held_transaction: tuple[Any, threading.Event]
) -> None:
    booking, release = held_transaction
    handle = app.start(booking, 7)
    pids = wait_until(lambda: conn.execute(
        "select pid from pg_stat_activity where datname = current_database() "
        "and state = 'idle in transaction' and starts_with(query, 'insert into business')"
    ).fetchall(), timeout=20, what="the transaction step to be open")
    conn.execute("select pg_terminate_backend(%s)", (pids[0][0],))
    release.set()
    assert handle.result(timeout=30) == 7
    assert conn.execute("select n from business").fetchall() == [(7,)]


def test_an_execution_that_loses_the_database_for_too_long_records_no_failure(
    dsn: str, conn: Conn
) -> None:
    """The database refuses connections for longer than the retry budget while a step ends:
    the execution stops without recording anything (not `failed`), and once the database is
    back and the lease has expired the run is taken over and finishes from its checkpoint."""
    app = pgdurable.App(dsn, lease_seconds=2)
    try:
        app.db.retry_seconds = 1.0
        calls: list[str] = []
        release = threading.Event()

        @app.step()
        def first() -> int:
            calls.append("first")
            return 1

        @app.step()
        def second() -> int:
            calls.append("second")
            release.wait(30)
            return 2

        @app.workflow()
        def flow() -> int:
            return first() + second()

        handle = app.start(flow, workflow_id="outage")
        wait_until(lambda: "second" in calls, timeout=20, what="the second step to run")
        dbname = conn.info.dbname
        with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
            admin.execute(f'alter database "{dbname}" allow_connections false')
            try:
                admin.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                              "where datname = %s and pid <> %s", (dbname, conn.info.backend_pid))
                release.set()
                time.sleep(3.0)  # the retry budget (1 s) runs out while recording the step
            finally:
                admin.execute(f'alter database "{dbname}" allow_connections true')
        app.db.retry_seconds = 60.0  # the pool may take a few seconds to reconnect
        row = conn.execute("select status from pgdurable.workflows where id = 'outage'")
        assert row.fetchone() == ("running",)  # not failed: the outcome was never decided
        assert conn.execute("select step_no from pgdurable.steps where workflow_id = 'outage'"
                            ).fetchall() == [(0,)]
        assert handle.result(timeout=30) == 3  # the waiting handle takes the expired run over
        assert calls == ["first", "second", "second"]
    finally:
        app.close()


def test_a_worker_and_the_daemon_survive_a_postgres_restart(tmp_path: Path) -> None:
    with restartable_database(TORTURE_SCHEMA) as (dsn, restart), processes() as procs:
        with connect(dsn) as conn:
            conn.execute("select pgdurable.declare_queue('torture')")
        daemon = Proc(dsn, tmp_path, "daemon", "recover", "--interval", "0.2")
        procs.append(daemon)
        proc = worker(dsn, tmp_path, "survivor", *WORKER_ARGS, "--poll-interval", "0.5",
                      TORTURE_TXN_SECONDS="0", TORTURE_STEP_SECONDS="0")
        procs.append(proc)
        with connect(dsn) as conn:
            first = enqueue_flows(conn, 1, 10)
            wait_until(lambda: succeeded(conn, first), timeout=60, what="the first batch")
            wait_until(lambda: holder_of(conn, LEADER_KEY) == "daemon", timeout=30,
                       what="the daemon to lead")

        seconds = restart()

        with connect(dsn) as conn:
            second = enqueue_flows(conn, 100, 20)
            wait_until(lambda: succeeded(conn, second), timeout=60,
                       what="runs enqueued after the restart")
            wait_until(lambda: holder_of(conn, LEADER_KEY) == "daemon", timeout=30,
                       what="the daemon to lead again")
            conn.execute("select pgdurable.enqueue('torture', 'orphan', %s, 'orphan')",
                         (Jsonb({"args": [], "kwargs": {}}),))
            conn.execute("select pgdurable.claim('dead', array['torture'], 1, 0.001, "
                         "array['orphan'])")
            wait_until(lambda: conn.execute(
                "select status from pgdurable.workflows where id = 'orphan'"
            ).fetchone() == ("pending",), timeout=20, what="the daemon to requeue an orphan")
            check_outcomes(conn, first + second)
        assert proc.alive() and daemon.alive(), proc.stderr() + daemon.stderr()
        assert "stepping down" in daemon.stderr()
    print(f"PostgreSQL restarted in {seconds:.2f}s")
