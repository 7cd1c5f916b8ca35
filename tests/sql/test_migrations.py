"""The migration runner: apply, no-op, concurrency, edited and foreign migrations, schema checks."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import psycopg
import pytest

import pgdurable
from pgdurable.errors import SchemaError
from pgdurable.store import migrate
from pgdurable.store.migrate import Applied, Migration
from tests.support.catalog import catalog
from tests.support.interleave import Blocked, wait_for_lock_wait
from tests.support.sql import Conn, call

LOCK_KEY = 7301544015412283461  # pgdurable/sql/queries.sql: migrations_lock


@pytest.fixture
def empty(empty_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        yield conn


def recorded(conn: Conn) -> list[tuple[int, str, str]]:
    rows = call(conn, "select version, name, sha256 from pgdurable.migrations order by version")
    return [(r["version"], r["name"], r["sha256"]) for r in rows]


def shipped() -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.sha256) for m in migrate.available()]


def recorded_functions(conn: Conn) -> list[tuple[str, str]]:
    rows = call(conn, "select name, sha256 from pgdurable.repeatables order by name")
    return [(r["name"], r["sha256"]) for r in rows]


def shipped_functions() -> list[tuple[str, str]]:
    return sorted((f.filename, f.sha256) for f in migrate.function_files())


def every_file() -> list[str]:
    return [m.filename for m in migrate.available()] + [
        f.filename for f in migrate.function_files()]


# -- applying ---------------------------------------------------------------------------------


def test_migrating_an_empty_database_applies_every_migration(empty: Conn) -> None:
    applied = migrate.migrate(empty)
    assert applied.migrations == migrate.available()
    assert applied.functions == migrate.function_files()
    assert applied.filenames == every_file()
    assert recorded(empty) == shipped()
    assert recorded_functions(empty) == shipped_functions()
    migrate.check_schema(empty)
    assert call(empty, "select to_regclass('pgdurable.workflows') as t")[0]["t"] is not None


def test_migrating_twice_is_a_no_op(empty: Conn) -> None:
    migrate.migrate(empty)
    before = catalog(empty)
    stamps = call(empty, "select version, applied_at from pgdurable.migrations order by 1")
    function_stamps = call(empty, "select name, applied_at from pgdurable.repeatables order by 1")
    assert migrate.migrate(empty) == Applied()
    assert not migrate.migrate(empty)
    assert catalog(empty) == before
    assert call(empty, "select version, applied_at from pgdurable.migrations order by 1") == stamps
    assert call(empty, "select name, applied_at from pgdurable.repeatables order by 1") == (
        function_stamps)


def test_the_template_matches_a_fresh_migration(empty: Conn, conn: Conn) -> None:
    migrate.migrate(empty)
    assert catalog(empty) == catalog(conn)


def test_migrate_needs_an_autocommit_connection(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn, pytest.raises(ValueError, match="autocommit"):
        migrate.migrate(conn)


def test_concurrent_migrations_apply_each_migration_once(
    empty_dsn: str, empty: Conn
) -> None:
    # Hold the migration lock so both runners are queued on it before either starts.
    empty.execute("begin")
    empty.execute("select pg_advisory_xact_lock(%s)", (LOCK_KEY,))
    runners = [Blocked(empty_dsn, migrate.migrate) for _ in range(2)]
    try:
        for runner in runners:
            runner.start()
        with psycopg.connect(empty_dsn, autocommit=True) as observer:
            for runner in runners:
                wait_for_lock_wait(observer, runner)
        empty.execute("commit")
        results: list[Applied] = [runner.join() for runner in runners]
    finally:
        for runner in runners:
            runner.close()
    names = sorted(name for result in results for name in result.filenames)
    assert names == sorted(every_file())  # each exactly once
    assert recorded(empty) == shipped()
    assert recorded_functions(empty) == shipped_functions()
    migrate.check_schema(empty)


def test_racing_migrations_from_threads(empty_dsn: str, empty: Conn) -> None:
    barrier = threading.Barrier(4)
    results: list[Applied] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_dsn, autocommit=True) as conn:
                barrier.wait()
                results.append(migrate.migrate(conn))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert sorted(m.version for r in results for m in r.migrations) == [v for v, _, _ in shipped()]
    assert sorted(f.filename for r in results for f in r.functions) == sorted(
        f.filename for f in migrate.function_files())
    assert recorded(empty) == shipped()
    assert recorded_functions(empty) == shipped_functions()


# -- refusing a database that does not match --------------------------------------------------


def test_an_edited_applied_migration_is_refused(conn: Conn) -> None:
    conn.execute("update pgdurable.migrations set sha256 = repeat('0', 64) where version = 1")
    first = migrate.available()[0].filename
    with pytest.raises(SchemaError, match=rf"migration {first} was edited after it was applied"):
        migrate.migrate(conn)
    with pytest.raises(SchemaError, match="restore the file and put the change in a new"):
        migrate.check_schema(conn)
    assert recorded(conn)[0][2] == "0" * 64


def test_a_newer_schema_is_refused(conn: Conn, dsn: str) -> None:
    before = catalog(conn)
    conn.execute("insert into pgdurable.migrations (version, name, sha256) "
                  "values (999, 'future', repeat('f', 64))")
    with pytest.raises(SchemaError, match="version 999, newer than this pgdurable supports"):
        migrate.check_schema(conn)
    with pytest.raises(SchemaError, match="migration 999, newer than this pgdurable knows"):
        migrate.migrate(conn)
    assert catalog(conn) == before
    with pgdurable.App(dsn) as app, pytest.raises(SchemaError, match="upgrade pgdurable"):
        app.list_workflows()




def test_check_schema_refuses_an_unmigrated_database(empty: Conn) -> None:
    with pytest.raises(SchemaError, match="run `pgdurable migrate`"):
        migrate.check_schema(empty)


def test_app_refuses_an_unmigrated_database(empty_dsn: str, empty: Conn) -> None:
    with pgdurable.App(empty_dsn) as app, pytest.raises(SchemaError, match="pgdurable migrate"):
        app.list_workflows()


def test_an_unmigrated_database_is_refused_and_left_untouched(
    empty_dsn: str, empty: Conn
) -> None:
    with pytest.raises((SchemaError, psycopg.Error)):
        migrate.check_schema(empty)
    with pgdurable.App(empty_dsn) as app, pytest.raises((SchemaError, psycopg.Error)):
        app.list_workflows()
    assert call(empty, "select to_regnamespace('pgdurable') as s")[0]["s"] is None


def test_an_empty_migrations_table_counts_as_unmigrated(empty: Conn) -> None:
    empty.execute("create schema pgdurable")
    empty.execute("create table pgdurable.migrations (version integer primary key, "
                  "name text not null, sha256 text not null, applied_at timestamptz)")
    with pytest.raises(SchemaError, match="run `pgdurable migrate` first"):
        migrate.check_schema(empty)


def test_app_auto_migrate(empty_dsn: str, empty: Conn) -> None:
    with pgdurable.App(empty_dsn, auto_migrate=True) as app:
        assert app.list_workflows() == []
    assert recorded(empty) == shipped()


# -- a new migration --------------------------------------------------------------------------


def _with_extra(monkeypatch: pytest.MonkeyPatch, sql: str) -> Migration:
    real = migrate.available()
    extra = Migration(real[-1].version + 1, "extra", sql)
    monkeypatch.setattr(migrate, "available", lambda: (*real, extra))
    return extra


def test_a_database_behind_the_library_is_refused_until_migrated(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = _with_extra(monkeypatch, "create table pgdurable.extra (x int);")
    with pytest.raises(SchemaError, match=rf"needs {extra.version}: run `pgdurable migrate`"):
        migrate.check_schema(conn)
    assert migrate.migrate(conn) == Applied(migrations=(extra,))
    migrate.check_schema(conn)
    assert recorded(conn)[-1] == (extra.version, "extra", extra.sha256)


def test_a_failing_migration_leaves_nothing_behind(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = catalog(conn)
    _with_extra(monkeypatch, "create table pgdurable.half_done (x int);\nselect 1 / 0;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate.migrate(conn)
    assert catalog(conn) == before
    assert recorded(conn) == shipped()[:-1]


# -- the SQL for other migration tools --------------------------------------------------------


def test_full_sql_contains_every_function_and_table(conn: Conn) -> None:
    text = migrate.full_sql()
    functions = call(conn, "select proname from pg_proc "
                           "where pronamespace = 'pgdurable'::regnamespace")
    assert functions
    for row in functions:
        pattern = rf"create (or replace )?function pgdurable\.{row['proname']}\s*\("
        assert re.search(pattern, text, re.IGNORECASE), f"{row['proname']} missing"
    tables = call(conn, "select relname from pg_class where relkind in ('r', 'p') "
                        "and relnamespace = 'pgdurable'::regnamespace and relname <> 'migrations'")
    for row in tables:
        pattern = rf"create (unlogged )?table (if not exists )?pgdurable\.{row['relname']}\b"
        assert re.search(pattern, text, re.IGNORECASE), f"table {row['relname']} missing"
    for m in migrate.available():
        assert f"-- {m.filename} (sha256 {m.sha256})" in text
    for f in migrate.function_files():
        assert f"-- {f.filename} (sha256 {f.sha256})" in text


def test_full_sql_builds_the_same_schema_as_migrate(empty: Conn, conn: Conn) -> None:
    empty.execute(migrate.full_sql())
    assert catalog(empty, skip_tables=("migrations",)) == catalog(
        conn, skip_tables=("migrations",))


def test_a_database_built_from_full_sql_is_accepted(empty_dsn: str, empty: Conn) -> None:
    empty.execute(migrate.full_sql())
    migrate.check_schema(empty)
    assert migrate.migrate(empty) == Applied()
    assert recorded_functions(empty) == shipped_functions()


def test_shipped_migrations_are_numbered_without_gaps() -> None:
    found = migrate.available()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert migrate.latest_version() == found[-1].version
    for m in found:
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        assert m.filename == f"{m.version:04d}_{m.name}.sql"


def test_functions_that_disable_plan_types_also_disable_jit(dsn: str) -> None:
    """Before PostgreSQL 18 a disabled plan type adds disable_cost to the estimate, which
    pushes the plan over jit_above_cost: the function would JIT-compile on every call (about
    0.2 s, seen as a claim that took 150 ms on PostgreSQL 15)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select p.proname, p.proconfig from pg_proc p "
            "join pg_namespace n on n.oid = p.pronamespace "
            "where n.nspname = 'pgdurable' and p.proconfig is not null").fetchall()
    disabling = {name: config for name, config in rows
                 if any(c.startswith("enable_") and c.endswith("=off") for c in config)}
    assert {"claim", "commit_many"} <= set(disabling)
    assert {name for name, config in disabling.items() if "jit=off" not in config} == set()
