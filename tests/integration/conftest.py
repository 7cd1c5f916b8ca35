"""Fixtures of the integration tests: extra App instances on the test database, and gates that
are opened before any App is closed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from psycopg.conninfo import make_conninfo

import pgdurable

from .helpers import Gate

AppFactory = Callable[..., pgdurable.App]


@pytest.fixture
def make_app(dsn: str) -> Iterator[AppFactory]:
    """Create more Apps on the test database; all are closed at teardown.

    `clock=` sets `pgdurable.now` on the App's connections (see helpers.FUTURE)."""
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
