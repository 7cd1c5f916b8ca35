"""The App the recovery fault tests run in `pgdurable worker` processes (cwd tests/support):
`python -m pgdurable.cli worker apps.torture:app --queue torture ...`.

`torture.flow(n)` has three steps: a transaction step inserting one business row, a plain step
appending to a side-effect log (on a connection of its own, so a re-run appends again), and a
plain step returning a value. Step outputs carry a random token, so each execution's outputs
differ and the test can tell which execution's outputs the workflow used. It returns them all.

`torture.hold(tag)` records each start of its one step in `torture_holds` and then waits until
`tag` is in `torture_flags`: a run that is busy until the test lets it go.

The tables are TORTURE_SCHEMA in tests/faults/helpers.py. Environment knobs (seconds):
  TORTURE_LEASE_SECONDS  lease of this process's runs (default 5)
  TORTURE_TXN_SECONDS    the transaction step holds its transaction open a random half of
                         this to this long
  TORTURE_STEP_SECONDS   each plain step takes a random 0..this long
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from typing import Any

import psycopg

import pgdurable

DSN = os.environ["PGDURABLE_DSN"]
app = pgdurable.App(DSN, lease_seconds=float(os.environ.get("TORTURE_LEASE_SECONDS", "5")))
torture = app.queue("torture")

TXN_SECONDS = float(os.environ.get("TORTURE_TXN_SECONDS", "0.1"))
STEP_SECONDS = float(os.environ.get("TORTURE_STEP_SECONDS", "0.1"))
_local = threading.local()


def _execute(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Run one statement on this thread's own connection, reconnecting through connection
    loss (as a careful application does). A statement whose commit was not acknowledged may
    be applied twice: side effects are at least once."""
    deadline = time.monotonic() + 120
    while True:
        conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(DSN, autocommit=True, connect_timeout=5)
                _local.conn = conn
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _pause(seconds: float, low: float = 0.0) -> None:
    if seconds > 0:
        time.sleep(random.uniform(low, seconds))


@app.transaction(name="torture.book")  # pgdurable's defaults: no retries
def book(conn: psycopg.Connection[Any], n: int) -> int:
    row = conn.execute("insert into torture_business (n, pid) values (%s, %s) returning id",
                       (n, os.getpid())).fetchone()
    assert row is not None
    _pause(TXN_SECONDS, TXN_SECONDS / 2)  # the transaction stays open meanwhile
    return int(row[0])


@app.step(name="torture.log")
def log_effect(n: int) -> str:
    token = f"log:{n}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _execute("insert into torture_effects (n, token, pid) values (%s, %s, %s)",
             (n, token, os.getpid()))
    _pause(STEP_SECONDS)
    return token


@app.step(name="torture.value")
def value(n: int) -> str:
    _pause(STEP_SECONDS)
    return f"value:{n}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@app.workflow(name="torture.flow")
def flow(n: int) -> dict[str, Any]:
    business_id = book(n)
    token = log_effect(n)
    result = value(n)
    return {"n": n, "business_id": business_id, "token": token, "value": result}


@app.step(name="torture.hold_step")
def hold_step(tag: str) -> int:
    _execute("insert into torture_holds (tag, pid) values (%s, %s)", (tag, os.getpid()))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _execute("select 1 from torture_flags where tag = %s", (tag,)):
            break
        time.sleep(0.02)
    return os.getpid()


@app.workflow(name="torture.hold")
def hold(tag: str) -> int:
    return hold_step(tag)
