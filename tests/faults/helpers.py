"""Running the fault apps in real processes, and reading what they did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

SCHEMA = """
create table fault_events (
    id bigserial primary key, order_id text not null, event text not null,
    pid integer not null, at timestamptz not null default clock_timestamp());
create table fault_shipments (
    id bigserial primary key, order_id text not null, charge_id text not null);
"""


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.01,
    what: str = "the condition",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Worker:
    """One `python -m apps.pipeline ...` process."""

    def __init__(self, dsn: str, *args: str, **env: str) -> None:
        full_env = {**os.environ, "PGDURABLE_DSN": dsn, "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apps.pipeline", *args], cwd=HERE, env=full_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no cleanup, no lease release, nothing
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == -9, f"exit {self.proc.returncode}\n{out}\n{err}"

    def finish(self, timeout: float = 90) -> dict[str, Any]:
        """Wait for a clean exit and return the printed results."""
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n{out}\n{err}"
        return dict(json.loads(out.strip().splitlines()[-1]))

    def exit_code(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@contextmanager
def workers() -> Iterator[list[Worker]]:
    """Collects workers and kills any still alive when the test ends."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


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
