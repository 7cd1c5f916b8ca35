"""Fixtures of the SQL-level tests: a connection with the clock at T0, and for the races, written
as explicit interleavings (tests/support/interleave.py), the first owner's connection and the
observer of the interleaving."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.interleave import Interleaving
from tests.support.sql import T0, Conn, set_now


@pytest.fixture
def db(conn: Conn) -> Conn:
    """The test database's autocommit connection, its clock at T0."""
    set_now(conn, T0)
    return conn


@pytest.fixture
def interleave(dsn: str) -> Iterator[Interleaving]:
    """The connections of one interleaving on the test database (closed at teardown)."""
    steps = Interleaving(dsn)
    yield steps
    steps.close()


@pytest.fixture
def a(interleave: Interleaving) -> Conn:
    """The first owner's connection (worker-a), its clock at T0."""
    return interleave.session(T0)


@pytest.fixture
def observer(interleave: Interleaving) -> Conn:
    """A connection that watches the others (pg_stat_activity, final states)."""
    return interleave.observer
