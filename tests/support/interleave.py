"""Races between connections, written as explicit interleavings (as PostgreSQL's isolation
specs are: "a begins and records, b takes over and waits, a commits, b proceeds").

    def test_x(a: Conn, interleave: Interleaving) -> None:
        start(a, "w1")
        with a.transaction():                       # a: begin; record a step
            record(a, "w1", 1, 0, "fetch")
            b = interleave.waits(lambda c: acquire(c, "w1", "worker-b"), now=LATER)
            # b: acquire, now waiting on a's row lock (checked in pg_stat_activity)
        taken = b.join()                            # a committed: b proceeds

`interleave.session(now)` gives a connection for a step that must not wait (it runs in the
test's thread, and fails on lock_timeout instead of hanging). The fixtures are tests/sql's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import pytest

from .sql import Conn, set_now

LOCK_TIMEOUT = "30s"  # for a statement expected to wait
SESSION_LOCK_TIMEOUT = "10s"  # for one that must not: it fails instead of hanging


class Blocked:
    """Run `fn(conn)` on its own connection in a thread, for statements expected to wait on a
    lock. `pid` is that connection's backend, to look up in pg_stat_activity."""

    def __init__(self, dsn: str, fn: Callable[[Conn], Any]) -> None:
        self.conn: Conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(f"set lock_timeout = '{LOCK_TIMEOUT}'")
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


class Interleaving:
    """The connections of one interleaving on database `dsn`, and an observer connection that
    watches them; everything is closed by `close` (the fixture's teardown)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.observer: Conn = psycopg.connect(dsn, autocommit=True)
        self._sessions: list[Conn] = []
        self._blocked: list[Blocked] = []

    def session(self, now: datetime | None = None) -> Conn:
        """A new autocommit connection, its clock at `now` (None: the wall clock), for steps
        that must not wait: one that does fails after the lock timeout."""
        conn: Conn = psycopg.connect(self.dsn, autocommit=True)
        self._sessions.append(conn)
        conn.execute(f"set lock_timeout = '{SESSION_LOCK_TIMEOUT}'")
        if now is not None:
            set_now(conn, now)
        return conn

    def waits(self, fn: Callable[[Conn], Any], *, now: datetime | None = None) -> Blocked:
        """Start `fn(conn)` on a connection of its own (clock at `now`) and return once its
        statement waits on a lock; fail if it finishes instead. `join()` its outcome after the
        step that releases the lock."""
        def run(conn: Conn) -> Any:
            if now is not None:
                set_now(conn, now)
            return fn(conn)

        blocked = Blocked(self.dsn, run)
        self._blocked.append(blocked)
        blocked.start()
        wait_for_lock_wait(self.observer, blocked)
        return blocked

    def close(self) -> None:
        for blocked in self._blocked:
            blocked.close()
        for conn in self._sessions:
            conn.close()
        self.observer.close()
