"""Every PL/pgSQL function of the schema passes plpgsql_check, with all its warnings on.

The extension is Debian's `postgresql-<version>-plpgsql-check`. Where it is not installed (the
embedded PostgreSQL 18) these tests are skipped, unless PGDURABLE_REQUIRE_PLPGSQL_CHECK=1 (set
by .ci/run for the PostgreSQL 15 run), where a missing extension fails them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.sql import Conn, Row, call

REQUIRE = os.environ.get("PGDURABLE_REQUIRE_PLPGSQL_CHECK") == "1"

FINDINGS = """
    select p.oid::regprocedure::text as signature, p.proname as function, c.level, c.message,
           coalesce(c.detail, '') as detail, c.lineno, c.statement, c.query, c.context
      from pg_proc p
      join pg_language l on l.oid = p.prolang and l.lanname = 'plpgsql'
     -- A trigger function is checked against the table of its trigger.
      left join lateral (select tgrelid from pg_trigger where tgfoid = p.oid limit 1) t on true
     cross join lateral plpgsql_check_function_tb(
               p.oid, coalesce(t.tgrelid, 0), fatal_errors => false, all_warnings => true) c
     where p.pronamespace = %(schema)s::regnamespace
     order by 1, c.lineno"""

BIGINT_TO_INTEGER = ("target type is different type than source type",
                     'cast "bigint" value to "integer" type')

# The warnings kept: (function, message, detail) -> (how many, why it stays).
KEPT: dict[tuple[str, str, str], tuple[int, str]] = {
    ("raise_error", "routine is marked as VOLATILE, should be IMMUTABLE", ""): (
        1, "it raises: immutable, a call with constant arguments could be folded (raised) "
           "while a query is planned"),
    ("claim", *BIGINT_TO_INTEGER): (
        4, "count(*) into integer variables: counts of running runs and starts, bounded by "
           "the queue's integer limits"),
    ("purge", *BIGINT_TO_INTEGER): (1, "count(*) of one call's deletions, at most p_limit"),
    ("wake_due", *BIGINT_TO_INTEGER): (1, "count(*) of queues notified, returned as integer"),
    ("insert_runs", *BIGINT_TO_INTEGER): (
        1, "count(*) of one call's inserts, returned as integer"),
    ("await_children", *BIGINT_TO_INTEGER): (
        3, "count(*) of the runs waited for or of a parent's open children, far below 2^31"),
    ("sleep_step", "target type is different type than source type",
     'cast "numeric" value to "double precision" type'): (
        1, "extract(epoch ...) is numeric; remaining_seconds is a double precision result"),
}


@pytest.fixture
def checked(conn: Conn) -> Iterator[Conn]:
    """`conn` with plpgsql_check created in its (throwaway) database."""
    available = call(conn, "select exists (select from pg_available_extensions "
                           "where name = 'plpgsql_check') as ok")[0]["ok"]
    if not available:
        version = conn.info.server_version // 10000
        message = (f"plpgsql_check is not installed on this PostgreSQL {version} "
                   f"(Debian's postgresql-{version}-plpgsql-check)")
        if REQUIRE:
            pytest.fail(f"{message}, and PGDURABLE_REQUIRE_PLPGSQL_CHECK=1")
        pytest.skip(message)
    conn.execute("create extension if not exists plpgsql_check")
    yield conn


def findings(conn: Conn, schema: str = "pgdurable") -> list[Row]:
    return call(conn, FINDINGS, {"schema": schema})


def describe(row: Row) -> str:
    where = f"line {row['lineno']} ({row['statement']})" if row["lineno"] else "declaration"
    return (f"{row['signature']} {where}: {row['level']}: {row['message']} {row['detail']} "
            f"{row['query'] or ''} {row['context'] or ''}").strip()


def test_no_plpgsql_function_has_an_error(checked: Conn) -> None:
    errors = [describe(r) for r in findings(checked) if r["level"] == "error"]
    assert errors == []


def test_the_warnings_are_the_ones_kept(checked: Conn) -> None:
    found = findings(checked)
    got = Counter((r["function"], r["message"], r["detail"]) for r in found
                  if r["level"] != "error")
    expected = Counter({key: count for key, (count, _) in KEPT.items()})
    new = [describe(r) for r in found
           if (r["function"], r["message"], r["detail"]) not in expected]
    assert new == [], "fix these in sql/functions/, or keep them in KEPT with the reason"
    assert got == expected


def test_every_plpgsql_function_is_checked(checked: Conn) -> None:
    count = call(checked, """
        select count(*) as n from pg_proc p join pg_language l on l.oid = p.prolang
         where p.pronamespace = 'pgdurable'::regnamespace and l.lanname = 'plpgsql'""")
    assert count[0]["n"] >= 30
    assert len({r["signature"] for r in findings(checked)}) >= 5  # it reports on them


def test_the_check_finds_an_error(checked: Conn) -> None:
    """A function that only fails when it runs (a missing column) is caught."""
    checked.execute("create schema probe")
    checked.execute("""
        create function probe.broken(p_id text) returns text language plpgsql as $$
        begin
            return (select w.no_such_column from pgdurable.workflows w where w.id = p_id);
        end $$""")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        checked.execute("select probe.broken('x')")
    assert [r["message"] for r in findings(checked, "probe") if r["level"] == "error"] == [
        'column w.no_such_column does not exist']
