from __future__ import annotations

import psycopg
import pytest

from .helpers import SCHEMA


@pytest.fixture
def fault_db(dsn: str, conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """The test database, with the tables the fault apps write their side effects to."""
    conn.execute(SCHEMA)
    return dsn
