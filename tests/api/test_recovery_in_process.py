"""The recovery daemon's Python API for a service that embeds its worker: `app.recovery()` and
`Worker(app, recover=True)` run it in-process, in a thread, with no `pgdurable recover`
process beside them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgdurable

Conn = psycopg.Connection[Any]
LEADER_KEY = 7301544015412283462  # sql/queries.sql: recovery_leader_lock


def leader_sessions(conn: Conn) -> int:
    row = conn.execute(
        "select count(*) from pg_locks where locktype = 'advisory' and granted "
        "and ((classid::bigint << 32) | objid::bigint) = %s and database = "
        "(select oid from pg_database where datname = current_database())",
        (LEADER_KEY,)).fetchone()
    assert row is not None
    return int(row[0])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def expired_run(conn: Conn, queue: str, wid: str) -> None:
    """A run claimed by a worker that died at once (its lease is already over)."""
    conn.execute("select pgdurable.enqueue(%s, 'some.workflow', p_id => %s)", (queue, wid))
    rows = conn.execute("select id from pgdurable.claim('dead', array[%s], 1, 0.001, "
                        "array['some.workflow'])", (queue,)).fetchall()
    assert [r[0] for r in rows] == [wid]
    conn.execute("select pg_sleep(0.01)")


def status(conn: Conn, wid: str) -> str | None:
    row = conn.execute("select status from pgdurable.workflows where id = %s", (wid,)).fetchone()
    return None if row is None else str(row[0])


def test_app_recovery_starts_in_a_thread_and_stops(app: pgdurable.App, conn: Conn) -> None:
    conn.execute("select pgdurable.declare_queue('elsewhere')")
    expired_run(conn, "elsewhere", "orphan")
    daemon = app.recovery(pgdurable.RecoverySettings(interval=0.05)).start()
    try:
        wait_until(lambda: status(conn, "orphan") == "pending", "the sweep to requeue the orphan")
        assert daemon.is_leader and daemon.sweeps >= 1
        assert daemon.totals["requeued"] == 1
        assert leader_sessions(conn) == 1
        with pytest.raises(pgdurable.InvalidArgument, match="started already"):
            daemon.start()
    finally:
        daemon.stop()
    wait_until(lambda: leader_sessions(conn) == 0, "the leader lock to be released")
    assert not any(t.name == "pgdurable-recovery" and t.is_alive() for t in threading.enumerate())


def test_worker_with_recover_runs_the_daemon_while_it_serves(app: pgdurable.App,
                                                             conn: Conn) -> None:
    seen: list[int] = []

    @app.workflow()
    def look() -> int:
        # The worker serves 'default'; the daemon sweeps every queue, 'elsewhere' included.
        wait_until(lambda: status(conn, "orphan") == "pending", "the embedded daemon's sweep")
        seen.append(leader_sessions(conn))
        return 1

    conn.execute("select pgdurable.declare_queue('elsewhere')")
    expired_run(conn, "elsewhere", "orphan")
    handle = app.queue("default").enqueue(look)
    worker = pgdurable.Worker(app, queues=["default"], poll_interval=0.05, exit_when_idle=True,
                              recover=pgdurable.RecoverySettings(interval=0.05))
    worker.run()
    assert handle.result(timeout=10) == 1
    assert seen == [1]  # the daemon held the leader lock while the worker served
    wait_until(lambda: leader_sessions(conn) == 0, "the daemon to stop with the worker")


def test_worker_refuses_a_bad_recover_option(app: pgdurable.App) -> None:
    @app.workflow()
    def noop() -> None: ...

    with pytest.raises(pgdurable.InvalidArgument, match="recover must be"):
        pgdurable.Worker(app, recover="yes")  # type: ignore[arg-type]
