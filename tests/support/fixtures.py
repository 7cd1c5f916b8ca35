"""The suite's fixtures (a plugin loaded by tests/conftest.py). The databases are those of
pgdurable.testing (dogfooded): `dsn` is `pgdurable_dsn`, `app` is bound with `pgdurable_bind`
and so follows `pgdurable_clock`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import pgdurable
from pgdurable.testing import create_database, drop_database, unique_name

from .runs import Gate


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


AppFactory = Callable[..., pgdurable.App]


@pytest.fixture
def make_app(dsn: str) -> Iterator[AppFactory]:
    """Create more Apps on the test database; all are closed at teardown.

    `clock=` sets `pgdurable.now` on the App's connections (see runs.FUTURE)."""
    created: list[pgdurable.App] = []

    def make(
        *, lease_seconds: float = 5.0, heartbeat_seconds: float | None = None,
        clock: str | None = None,
    ) -> pgdurable.App:
        target = dsn if clock is None else make_conninfo(dsn, options=f"-c pgdurable.now={clock}")
        new = pgdurable.App(target, lease_seconds=lease_seconds,
                            heartbeat_seconds=heartbeat_seconds)
        created.append(new)
        return new

    yield make
    for created_app in reversed(created):
        created_app.close()


@pytest.fixture
def gates(app: pgdurable.App, make_app: AppFactory) -> Iterator[Callable[[], Gate]]:
    """Make gates; at teardown they are all opened before the Apps are closed."""
    made: list[Gate] = []

    def make() -> Gate:
        gate = Gate()
        made.append(gate)
        return gate

    yield make
    for gate in made:
        gate.open()
