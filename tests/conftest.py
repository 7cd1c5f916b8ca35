"""Test databases: one migrated template per session, a fresh clone of it per test.

The server is the embedded PostgreSQL (data under .pgdurable/test/pg) unless
PGDURABLE_TEST_DSN names another one.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

import pgdurable
from pgdurable.dev import embedded
from pgdurable.store import migrate

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


@pytest.fixture(scope="session")
def server_dsn() -> str:
    dsn = os.environ.get("PGDURABLE_TEST_DSN")
    if dsn:
        return dsn
    return embedded.ensure_running(ROOT / ".pgdurable" / "test" / "pg")


def _janitor(server_dsn: str, dbname: str, template: str | None = None,
             as_template: bool = False) -> DatabaseJanitor:
    params = conninfo_to_dict(server_dsn)
    return DatabaseJanitor(
        user=str(params.get("user") or os.environ.get("PGUSER") or "postgres"),
        host=str(params.get("host") or "localhost"),
        port=str(params.get("port") or 5432),
        password=str(params["password"]) if params.get("password") else None,
        dbname=dbname,
        template_dbname=template,
        maintenance_dbname=str(params.get("dbname") or "postgres"),
        as_template=as_template,
    )


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    name = f"pgd_tmpl_{os.getpid()}"
    janitor = _janitor(server_dsn, name, as_template=True)
    janitor.drop()
    janitor.init()
    with psycopg.connect(make_conninfo(server_dsn, dbname=name), autocommit=True) as conn:
        migrate.migrate(conn)
    yield name
    janitor.drop()


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A DSN of a brand-new database with no pgdurable schema."""
    name = f"pgd_empty_{os.getpid()}_{next(_counter)}"
    janitor = _janitor(server_dsn, name)
    janitor.init()
    yield make_conninfo(server_dsn, dbname=name)
    janitor.drop()


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A DSN of a fresh database cloned from the migrated template."""
    name = f"pgd_test_{os.getpid()}_{next(_counter)}"
    janitor = _janitor(server_dsn, name, template=template_db)
    janitor.init()
    yield make_conninfo(server_dsn, dbname=name)
    janitor.drop()


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def app(dsn: str) -> Iterator[pgdurable.App]:
    application = pgdurable.App(dsn, lease_seconds=5)
    yield application
    application.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]
