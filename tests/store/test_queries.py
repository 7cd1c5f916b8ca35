"""sql/queries.sql against a migrated database, and SQLSTATE translation with real errors."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg import pq
from psycopg.types.json import Jsonb

from pgdurable import errors
from pgdurable.store.database import Database, run_query, translate
from pgdurable.store.sql import all_queries
from tests.support.sql import Conn, start

_PARAM = re.compile(r"%\((\w+)\)s")


def _numbered(sql: str) -> tuple[str, int]:
    """`%(name)s` placeholders as `$n` (the same name gets the same number)."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${numbers.setdefault(match[1], len(numbers) + 1)}"

    return _PARAM.sub(number, sql), len(numbers)


@pytest.mark.parametrize("name", sorted(all_queries()))
def test_every_named_query_parses_against_the_schema(conn: Conn, name: str) -> None:
    """The server parses and plans each statement (tables, columns, function signatures),
    without running it."""
    sql = all_queries()[name]
    statements = [s for s in sql.split(";") if s.strip()]
    for i, statement in enumerate(statements):
        text, _ = _numbered(statement)
        result = conn.pgconn.prepare(f"check_{name}_{i}".encode(), text.encode())
        assert result.status == pq.ExecStatus.COMMAND_OK, (
            f"query {name!r} does not parse: {result.error_message.decode()}"
        )


@pytest.mark.parametrize("code", sorted(errors.SQLSTATE_TO_EXCEPTION))
def test_translate_maps_each_pd_sqlstate(conn: Conn, code: str) -> None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute("select pgdurable.raise_error(%s, 'the message', 'the hint')", (code,))
    assert info.value.sqlstate == code
    translated = translate(info.value)
    assert type(translated) is errors.SQLSTATE_TO_EXCEPTION[code]
    assert isinstance(translated, errors.PgDurableError)
    assert str(translated) == "the message (hint: the hint)"


def test_translate_without_a_hint_keeps_the_bare_message(conn: Conn) -> None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute("select pgdurable.raise_error('PD004', 'workflow ''x'' does not exist')")
    translated = translate(info.value)
    assert isinstance(translated, errors.WorkflowNotFound)
    assert isinstance(translated, LookupError)
    assert str(translated) == "workflow 'x' does not exist"


@pytest.mark.parametrize("sql", ["select 1 / 0", "select pgdurable.raise_error('PD999', 'x')"])
def test_translate_returns_other_errors_unchanged(conn: Conn, sql: str) -> None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    assert translate(info.value) is info.value


def test_run_query_raises_the_translated_exception(conn: Conn) -> None:
    start(conn, "w1")
    with pytest.raises(errors.WorkflowNotFound, match="'nope' does not exist"):
        run_query(conn, "cancel", {"id": "nope", "cascade": True})
    with pytest.raises(errors.FencedError, match="epoch 7 is stale") as info:
        run_query(conn, "load_steps", {"id": "w1", "epoch": 7})
    assert isinstance(info.value.__cause__, psycopg.Error)
    with pytest.raises(errors.InvalidArgument, match="lease_seconds must be > 0"):
        run_query(conn, "start_workflow", {"id": "w2", "name": "f", "inputs": None,
                                           "owner": "o", "lease_seconds": 0,
                                           "timeout_seconds": None})


def test_database_fetch_translates_too(dsn: str) -> None:
    db = Database(dsn, max_size=2)
    db.open()
    inputs = Jsonb({"args": [], "kwargs": {}})
    try:
        assert db.fetch_one("get_workflow", {"id": "nope"}) is None
        with pytest.raises(errors.WorkflowConflict):
            for name in ("a", "b"):
                db.fetch_one("start_workflow", {"id": "w1", "name": name, "inputs": inputs,
                                                "owner": "o", "lease_seconds": 30,
                                                "timeout_seconds": None})
        # the pooled connection is usable after an error (autocommit, no aborted transaction)
        row = db.fetch_one("get_workflow", {"id": "w1"})
        assert row is not None and row["name"] == "a"
    finally:
        db.close()
