"""The App that the `pgdurable worker` processes of test_workers.py serve.

Usage: PGDURABLE_DSN=... python -m pgdurable.cli worker apps.qapp:app [--queue Q ...] (cwd
tests/support). QAPP_LEASE_SECONDS sets the App's lease (default 30).

Every execution of a workflow here writes one row to `qruns` (workflow id, worker pid, start
and end from the server clock) on a connection of its own, so the tests can check how
executions overlapped. The tables (QAPP_SCHEMA in tests/runtime/test_workers.py) are created
by the tests.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

import pgdurable

DSN = os.environ["PGDURABLE_DSN"]
app = pgdurable.App(DSN, lease_seconds=float(os.environ.get("QAPP_LEASE_SECONDS", "30")))

# Keep in sync with QUEUES in test_workers.py (the tests declare them before enqueueing).
limited = app.queue("limited", concurrency=2)
parts = app.queue("parts", partition_concurrency=2)
rated = app.queue("rated", rate_limit=pgdurable.RateLimit(4, per_seconds=0.5))
work = app.queue("work")

_local = threading.local()


def _conn() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(DSN, autocommit=True)
        _local.conn = conn
    return conn


def _begin() -> int:
    row = _conn().execute(
        "insert into qruns (workflow_id, pid, started) values (%s, %s, clock_timestamp()) "
        "returning id", (pgdurable.workflow_id(), os.getpid())).fetchone()
    assert row is not None
    return int(row[0])


def _end(run: int) -> None:
    _conn().execute("update qruns set ended = clock_timestamp() where id = %s", (run,))


@app.workflow(name="qapp.interval")
def interval(seconds: float) -> int:
    """Busy for `seconds`; returns the pid of the worker that ran it."""
    run = _begin()
    time.sleep(seconds)
    _end(run)
    return os.getpid()


@app.workflow(name="qapp.hold")
def hold(tag: str) -> int:
    """Busy until the test inserts `tag` into qflags (or 60 s pass)."""
    run = _begin()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _conn().execute("select 1 from qflags where tag = %s", (tag,)).fetchone():
            break
        time.sleep(0.02)
    _end(run)
    return os.getpid()


@app.workflow(name="qapp.only_full")
def only_full(x: int) -> int:
    """Registered by this App only, not by apps.qapp_partial."""
    return x * 2
