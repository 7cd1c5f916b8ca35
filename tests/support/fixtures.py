"""The suite's fixtures (a plugin loaded by tests/conftest.py). The databases are those of
pgdurable.testing (dogfooded): `dsn` is `pgdurable_dsn`, `app` is bound with `pgdurable_bind`
and so follows `pgdurable_clock`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

import pgdurable
from pgdurable.testing import create_database, drop_database, unique_name


@pytest.fixture(scope="session")
def server_dsn(pgdurable_server_dsn: str) -> str:
    return pgdurable_server_dsn


@pytest.fixture(scope="session")
def template_db(pgdurable_template: str) -> str:
    return pgdurable_template


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A DSN of a brand-new database with no pgdurable schema."""
    name = unique_name("pgd_empty")
    yield create_database(server_dsn, name)
    drop_database(server_dsn, name)


@pytest.fixture
def dsn(pgdurable_dsn: str) -> str:
    """A DSN of a fresh database cloned from the migrated template."""
    return pgdurable_dsn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def app(pgdurable_bind: Callable[[pgdurable.App], pgdurable.App]) -> pgdurable.App:
    return pgdurable_bind(pgdurable.App(lease_seconds=5))


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]
