"""The fault apps (tests/support/apps/pipeline.py and torture.py) in real processes, the tables
they write their side effects to, and reading what they did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from tests.support.processes import Piped, Proc

Conn = psycopg.Connection[tuple[Any, ...]]

# The tables the apps/pipeline.py workflows write to.
SCHEMA = """
create table fault_events (
    id bigserial primary key, order_id text not null, event text not null,
    pid integer not null, at timestamptz not null default clock_timestamp());
create table fault_shipments (
    id bigserial primary key, order_id text not null, charge_id text not null);
"""

# The tables the apps/torture.py workflows write to.
TORTURE_SCHEMA = """
create table torture_business (
    id bigserial primary key, n integer not null, pid integer not null);
create table torture_effects (
    id bigserial primary key, n integer not null, token text not null, pid integer not null,
    at timestamptz not null default clock_timestamp());
create table torture_holds (
    id bigserial primary key, tag text not null, pid integer not null,
    started timestamptz not null default clock_timestamp());
create table torture_flags (tag text primary key);
"""


def pipeline(dsn: str, *args: str, **env: str) -> Piped:
    """One `python -m apps.pipeline ...` process."""
    return Piped(dsn, "-m", "apps.pipeline", *args, **env)


def worker(dsn: str, logdir: Path, label: str, *args: str, **env: str) -> Proc:
    """A `pgdurable worker apps.torture:app` process."""
    return Proc(dsn, logdir, label, "worker", "apps.torture:app", *args, **env)


def events(conn: Conn, order_id: str | None = None) -> dict[str, int]:
    """How many times each event was logged (for one order, or in total)."""
    rows = conn.execute(
        "select event, count(*) from fault_events where %(o)s::text is null or order_id = %(o)s "
        "group by event", {"o": order_id},
    ).fetchall()
    return {str(event): int(n) for event, n in rows}


def shipments_per_order(conn: Conn) -> dict[str, int]:
    rows = conn.execute("select order_id, count(*) from fault_shipments group by order_id")
    return {str(order_id): int(n) for order_id, n in rows.fetchall()}


def has_event(conn: Conn, order_id: str, event: str) -> bool:
    return events(conn, order_id).get(event, 0) > 0


def run_states(conn: Conn) -> dict[str, tuple[str, int]]:
    rows = conn.execute("select id, status, attempt from pgdurable.workflows").fetchall()
    return {str(i): (str(s), int(a)) for i, s, a in rows}


def all_leases_expired(conn: Conn) -> bool:
    row = conn.execute(
        "select count(*) from pgdurable.workflows "
        "where status = 'running' and lease_until >= pgdurable.now()"
    ).fetchone()
    return row is not None and row[0] == 0
