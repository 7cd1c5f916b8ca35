"""Fixtures of the SQL race tests: the first owner's connection (clock at T0), an observer,
and blocked statements on connections of their own (closed at teardown)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from .helpers import T0, Blocked, set_now

Conn = psycopg.Connection[Any]


@pytest.fixture
def a(dsn: str) -> Iterator[Conn]:
    """The first owner's connection (worker-a), its clock at T0."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        set_now(conn, T0)
        yield conn


@pytest.fixture
def observer(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def blocked() -> Iterator[list[Blocked]]:
    made: list[Blocked] = []
    yield made
    for b in made:
        b.close()
