"""The one place that sends SQL: a connection pool and named-query calls.

Every call takes an optional `conn`: given, the statement runs on the caller's connection (and so
inside the caller's transaction); otherwise on a pooled autocommit connection, where each
function call is its own transaction. Database errors with a pgdurable SQLSTATE become
pgdurable exceptions here and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from pgdurable.core import errors
from pgdurable.store.sql import query

log = logging.getLogger("pgdurable.db")

Row = dict[str, Any]
Params = Mapping[str, Any]
Conn = psycopg.Connection[Any]
T = TypeVar("T")


def jsonb(value: Any) -> Jsonb | None:
    """Wrap a JSON-compatible value for a jsonb parameter (None stays SQL NULL)."""
    return None if value is None else Jsonb(value)


def connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A single connection, with server errors turned into one readable line."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise errors.ConfigurationError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class Database:
    """A pool of autocommit connections plus helpers that run named queries."""

    def __init__(self, dsn: str, *, max_size: int = 10, retry_seconds: float = 60.0) -> None:
        self.dsn = dsn
        self.retry_seconds = retry_seconds
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True},
            name="pgdurable",
        )

    def open(self) -> None:
        # Fail fast with one line instead of the pool's silent background retries.
        connect(self.dsn).close()
        self.pool.open(wait=True, timeout=30)

    def ensure_pool_size(self, size: int) -> None:
        """Grow the pool to at least `size` connections (a worker needs one per slot)."""
        if self.pool.max_size < size:
            self.pool.resize(self.pool.min_size, size)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def connection(self, timeout: float = 60.0) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.pool.connection(timeout=timeout) as conn:
                yield conn
        except PoolTimeout as exc:
            raise errors.DatabaseUnavailable(f"no database connection available: {exc}") from None

    def fetch_all(
        self, name: str, params: Params | None = None, *, conn: Conn | None = None
    ) -> list[Row]:
        """Run a named query. On a pooled connection, a lost connection or a server restart
        is retried with backoff for up to `retry_seconds` (every pgdurable call is safe to
        repeat: writes are keyed by id and fenced by epoch); on the caller's connection the
        error is the caller's to handle, as its transaction is gone."""
        if conn is not None:
            return _run(conn, name, params)

        def once(timeout: float) -> list[Row]:
            with self.connection(timeout) as pooled:
                return _run(pooled, name, params)

        return self.retrying(name, once)

    def retrying(
        self, name: str, once: Callable[[float], T], *, on_lost: Callable[[], None] | None = None
    ) -> T:
        """Call `once(timeout)`, calling it again after a transient error (`is_transient`: a
        lost connection, a restarting server, a serialization failure or deadlock) with backoff,
        0.05 s doubling to 2 s, for up to `retry_seconds` in all, waiting for a pooled
        connection included; then DatabaseUnavailable. `on_lost` runs after each failed call."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                return once(max(0.1, deadline - time.monotonic()))
            except psycopg.OperationalError as exc:
                if not is_transient(exc):
                    raise
                if on_lost is not None:
                    on_lost()
                if time.monotonic() + delay > deadline:
                    raise errors.DatabaseUnavailable(
                        f"database unavailable: {_one_line(exc)}") from exc
                log.warning("%s: %s; retrying in %.2fs", name, _one_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def fetch_one(
        self, name: str, params: Params | None = None, *, conn: Conn | None = None
    ) -> Row | None:
        rows = self.fetch_all(name, params, conn=conn)
        return rows[0] if rows else None

    def pinned(self) -> Pinned:
        """A pool connection kept for one user at a time (see Pinned)."""
        return Pinned(self)


class Pinned:
    """One pool connection kept checked out for a single caller at a time (the group commit's
    leader, which writes one batch after the other), returning rows as tuples: a hot path
    without a pool checkout and dict rows per call. A lost connection is given back to the pool
    (which discards it) and the call retried on a new one, as `Database.fetch_all` does."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Conn | None = None

    def fetch_all(self, name: str, params: Params) -> list[tuple[Any, ...]]:
        def once(timeout: float) -> list[tuple[Any, ...]]:
            if self._conn is None:
                try:
                    self._conn = self.db.pool.getconn(timeout=timeout)
                except PoolTimeout as exc:
                    raise errors.DatabaseUnavailable(
                        f"no database connection available: {exc}") from None
            return _run_tuples(self._conn, name, params)

        return self.db.retrying(name, once, on_lost=self.close)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self.db.pool.putconn(conn)
            except Exception:  # the pool is closed already
                conn.close()


# Server-side ends of a transaction that a call survives by being made again:
# serialization_failure, deadlock_detected, and the shutdown/crash codes a backend reports as
# it goes away (class 08 is a lost connection too).
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})


def is_transient(exc: psycopg.OperationalError) -> bool:
    """Did the database, not the statement, end the call (so that it can be made again)?
    No SQLSTATE at all means the client lost the connection (closed socket, server gone)."""
    sqlstate = exc.sqlstate or ""
    return not sqlstate or sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08")


def _run(conn: psycopg.Connection[Any], name: str, params: Params | None) -> list[Row]:
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query(name), params, prepare=params is not None)
            return cur.fetchall() if cur.description is not None else []
    except psycopg.Error as exc:
        raise translate(exc) from exc


def _run_tuples(conn: psycopg.Connection[Any], name: str, params: Params) -> list[tuple[Any, ...]]:
    try:
        with conn.cursor() as cur:
            cur.execute(query(name), params, prepare=True)
            return cur.fetchall()
    except psycopg.Error as exc:
        raise translate(exc) from exc


def run_query(conn: psycopg.Connection[Any], name: str, params: Params | None = None) -> list[Row]:
    """Run a named query on a given connection (migrations, tests, transaction steps)."""
    return _run(conn, name, params)


def translate(exc: psycopg.Error) -> Exception:
    """Map a database error to pgdurable's exception for its SQLSTATE (or return it as is)."""
    cls = errors.SQLSTATE_TO_EXCEPTION.get(exc.sqlstate or "")
    if cls is None:
        return exc
    message = exc.diag.message_primary or str(exc)
    if exc.diag.message_hint:
        message = f"{message} (hint: {exc.diag.message_hint})"
    return cls(message)
