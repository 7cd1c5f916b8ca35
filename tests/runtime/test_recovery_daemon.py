"""The recovery daemon in-process (pgdurable/recovery.py): leader election on an advisory lock,
stepping down and reconnecting when its connection is killed, one log line per action, and
refusing an unmigrated database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pgdurable.errors import SchemaError
from pgdurable.runtime.recovery import RecoveryDaemon, RecoverySettings
from tests.support.processes import backends, leader, terminate, wait_for_leader
from tests.support.sql import claim_one, declare, enqueue, scalar, workflow
from tests.support.waiting import wait_until

Conn = psycopg.Connection[Any]
INTERVAL = 0.1


@contextmanager
def running(dsn: str, *names: str, interval: float = INTERVAL) -> Iterator[list[RecoveryDaemon]]:
    """Daemons in threads, each connecting as application_name `name`."""
    daemons = [RecoveryDaemon(make_conninfo(dsn, application_name=name),
                              RecoverySettings(interval=interval)) for name in names]
    threads = [threading.Thread(target=d.run, daemon=True) for d in daemons]
    for thread in threads:
        thread.start()
    try:
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop()
        for thread in threads:
            thread.join(timeout=10)
            assert not thread.is_alive(), "a daemon did not stop"


def expired_run(conn: Conn, wid: str, queue: str = "default") -> None:
    """A run claimed by a worker that died at once (its lease is already over)."""
    enqueue(conn, queue, id=wid)
    claim_one(conn, "dead-worker", queue, lease=0.001)
    conn.execute("select pg_sleep(0.01)")


def test_exactly_one_daemon_leads(dsn: str, conn: Conn) -> None:
    with running(dsn, "daemon-a", "daemon-b", "daemon-c") as daemons:
        first = wait_for_leader(conn)
        wait_until(lambda: sum(d.sweeps for d in daemons) >= 5, what="a few sweeps")
        assert [d.is_leader for d in daemons].count(True) == 1
        by_name = dict(zip(("daemon-a", "daemon-b", "daemon-c"), daemons, strict=True))
        assert by_name[first].is_leader
        assert [name for name, d in by_name.items() if d.sweeps] == [first]  # standbys idle
        for name in by_name:
            assert len(backends(conn, name)) == 1  # standbys keep their connection


def test_a_standby_takes_over_when_the_leader_stops(dsn: str, conn: Conn) -> None:
    with running(dsn, "daemon-a", "daemon-b") as daemons:
        by_name = dict(zip(("daemon-a", "daemon-b"), daemons, strict=True))
        first = wait_for_leader(conn)
        other = "daemon-b" if first == "daemon-a" else "daemon-a"
        stopped_at = time.monotonic()
        by_name[first].stop()
        wait_until(lambda: leader(conn) == other, timeout=5, interval=0.005,
                   what="the standby to take over")
        took = time.monotonic() - stopped_at
        assert took <= INTERVAL * 2 + 1.0, f"takeover took {took:.2f}s"
        swept = by_name[other].sweeps
        wait_until(lambda: by_name[other].sweeps > swept, what="the new leader to sweep")


def test_a_leader_whose_connection_is_killed_steps_down_and_recovery_continues(
    dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgdurable.recovery")
    def stepped_down() -> int:
        return sum("lost its connection" in r.getMessage() and "stepping down" in r.getMessage()
                   for r in caplog.records)

    with running(dsn, "daemon-a", "daemon-b") as daemons:
        first = wait_for_leader(conn)
        for killed in range(1, 4):  # kill whoever leads, three times
            current = wait_for_leader(conn)
            assert terminate(conn, current) == 1
            # A killed leader notices at its next sweep (within an interval), then steps down.
            wait_until(lambda n=killed: stepped_down() >= n, timeout=10,
                       what="the killed leader to step down")
            wait_until(lambda: leader(conn) is not None, timeout=10, what="a new leader")
        expired_run(conn, "orphan")
        wait_until(lambda: workflow(conn, "orphan")["status"] == "pending", timeout=10,
                   what="the orphan to be requeued by whoever leads now")
        assert [d.is_leader for d in daemons].count(True) == 1
    assert first in ("daemon-a", "daemon-b")
    assert stepped_down() >= 3


def test_the_daemon_survives_its_only_connection_being_killed(dsn: str, conn: Conn) -> None:
    with running(dsn, "solo") as (daemon,):
        wait_until(lambda: leader(conn) == "solo", what="the daemon to lead")
        terminate(conn, "solo")
        expired_run(conn, "after-kill")
        wait_until(lambda: workflow(conn, "after-kill")["status"] == "pending", timeout=10,
                   what="a sweep after reconnecting")
        assert daemon.is_leader


def test_one_log_line_per_action(dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture) -> None:
    declare(conn, "fragile", max_recoveries=1)
    expired_run(conn, "comes-back")
    expired_run(conn, "dead", queue="fragile")
    caplog.set_level(logging.INFO, logger="pgdurable.recovery")
    with running(dsn, "logger") as (daemon,):
        wait_until(lambda: daemon.totals.get("requeued") == 1
                   and daemon.totals.get("dead_lettered") == 1, what="one sweep's work")
        wait_until(lambda: daemon.sweeps >= 3, what="a few more sweeps")
    messages = [r.getMessage() for r in caplog.records if r.name == "pgdurable.recovery"]
    assert messages.count("recovery daemon is now the leader") == 1
    assert messages.count("recovery: requeued 1") == 1
    assert messages.count("recovery: dead lettered 1") == 1
    # Both requeued and dead-lettered runs were found by the first sweep, which logs one line
    # per kind of action; the requeued run's queue is woken (once more by the next sweep, see
    # test_sweep_sql.py::test_a_requeued_run_wakes_its_queue_once).
    assert 1 <= messages.count("recovery: woken queues 1") <= 2
    assert all(m.startswith("recovery") for m in messages), messages
    assert len(messages) <= 5, messages  # idle sweeps log nothing
    assert daemon.totals["scheduled"] == daemon.totals["purged"] == 0


def test_a_daemon_refuses_an_unmigrated_database(empty_dsn: str) -> None:
    daemon = RecoveryDaemon(empty_dsn, RecoverySettings(interval=INTERVAL))
    started = time.monotonic()
    with pytest.raises(SchemaError, match="pgdurable migrate"):
        daemon.run()
    assert time.monotonic() - started < 10
    assert not daemon.is_leader and daemon.sweeps == 0


def test_a_daemon_waits_for_an_unreachable_database_and_stops_promptly() -> None:
    daemon = RecoveryDaemon("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1",
                            RecoverySettings(interval=INTERVAL))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    time.sleep(0.5)  # nothing to wait for: it retries with backoff meanwhile
    assert thread.is_alive() and not daemon.is_leader
    daemon.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_sweep_runs_as_one_call(dsn: str, conn: Conn) -> None:
    """What pg_cron would run: no daemon, no lock, one statement."""
    expired_run(conn, "r")
    counts = scalar(conn, "select pgdurable.recover_sweep(1000, 604800)")
    assert counts["requeued"] == 1
