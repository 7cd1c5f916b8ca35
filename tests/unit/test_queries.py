"""sql/queries.sql: the loader, and the names the library refers to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pgdurable
from pgdurable import errors
from pgdurable.store.sql import all_queries, parse, query

PACKAGE = Path(pgdurable.__file__).parent
ROOT = PACKAGE.parent
# fetch_one("name", ...), fetch_all(\n "name"...), run_query(conn, "name"), query("name")
_CALL = re.compile(r"\b(?:fetch_one|fetch_all|run_query|query|_one|_all|_maybe|_execution)\(\s*"
                   r"(?:[\w.]+\s*,\s*)?\"(\w+)\"")


def test_parse_splits_named_blocks() -> None:
    text = (
        "-- a preamble that is not a query\n"
        "\n"
        "-- name: first\n"
        "select 1\n"
        "\n"
        "-- name: second   \n"
        "-- a comment inside the block stays\n"
        "select 2\n"
        "  from t;\n"
    )
    assert parse(text) == {
        "first": "select 1",
        "second": "-- a comment inside the block stays\nselect 2\n  from t;",
    }


def test_parse_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="'twice' is defined twice"):
        parse("-- name: twice\nselect 1\n-- name: other\nselect 2\n-- name: twice\nselect 3\n")


def test_parse_without_names_is_empty() -> None:
    assert parse("select 1;\n-- name is not a marker here\n") == {}


def test_name_markers_need_their_own_line() -> None:
    queries = parse("-- name: a\nselect '-- name: b' as x\n")
    assert list(queries) == ["a"]


def test_query_names_a_missing_query() -> None:
    with pytest.raises(KeyError, match=r"no query named 'nope' in sql/queries\.sql"):
        query("nope")


def test_the_shipped_file_parses() -> None:
    queries = all_queries()
    assert queries
    for name, body in queries.items():
        assert re.fullmatch(r"[a-z_0-9]+", name)
        assert body.strip(), f"query {name!r} is empty"
        assert "-- name:" not in body
    assert query("start_workflow") == queries["start_workflow"]


def _referenced() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _CALL.findall(path.read_text("utf-8")):
            found.setdefault(name, []).append(path.name)
    return found


def test_every_query_name_used_in_the_library_exists() -> None:
    referenced = _referenced()
    # sanity: the scan sees the calls it is meant to see
    assert {"start_workflow", "record_step", "commit_many", "migrations_lock",
            "schema_version"} <= set(referenced)
    missing = {name: files for name, files in referenced.items() if name not in all_queries()}
    assert missing == {}


def test_every_pd_sqlstate_raised_in_sql_is_mapped() -> None:
    sql = "\n".join(p.read_text("utf-8")
                    for p in sorted((ROOT / "sql" / "migrations").glob("*.sql")))
    raised = set(re.findall(r"'(PD\d{3})'", sql))
    assert raised, "no PDxxx codes found in the migrations"
    assert raised <= set(errors.SQLSTATE_TO_EXCEPTION)
