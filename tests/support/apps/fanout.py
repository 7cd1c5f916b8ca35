"""The App of the fan-out fault tests: a parent starts N children on one queue and gathers
them. Every child's step writes one row to `fan_effects` on a connection of its own (its side
effect, at least once), so a test can count what ran.

Usage: PGDURABLE_DSN=... python -m pgdurable.cli worker apps.fanout:app (cwd tests/support).
The test creates `fan_effects` (FANOUT_SCHEMA in tests/faults/test_fanout_kill.py).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

import pgdurable

DSN = os.environ["PGDURABLE_DSN"]
app = pgdurable.App(DSN, lease_seconds=2.0)
fan = app.queue("fan")
_local = threading.local()


def _conn() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(DSN, autocommit=True)
        _local.conn = conn
    return conn


@app.step(name="fanout.effect")
def effect(n: int) -> int:
    _conn().execute("insert into fan_effects values (%s, %s)", (pgdurable.workflow_id(), n))
    time.sleep(float(os.environ.get("FANOUT_KID_SECONDS", "0.01")))
    return n * n


@app.workflow(name="fanout.kid")
def kid(n: int) -> int:
    return effect(n)


@app.workflow(name="fanout.parent")
def parent(n: int) -> int:
    return sum(pgdurable.gather(fan.enqueue_many(kid, [(i,) for i in range(n)])))
