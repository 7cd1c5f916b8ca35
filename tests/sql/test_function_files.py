"""The repeatable function files (sql/functions/): what they define, when they are applied again,
and the upgrade of a database migrated before they existed."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import psycopg
import pytest

import pgdurable
from pgdurable import errors
from pgdurable.errors import SchemaError
from pgdurable.store import migrate
from pgdurable.store.database import run_query
from pgdurable.store.migrate import Applied, FunctionFile
from tests.support.catalog import catalog
from tests.support.sql import Conn, call

# The last version applied by the runner that knew only versioned migrations.
BEFORE_FUNCTION_FILES = 6

FUNCTIONS = """
    select p.oid::regprocedure::text as signature, pg_get_functiondef(p.oid) as definition,
           obj_description(p.oid, 'pg_proc') as comment
      from pg_proc p where p.pronamespace = 'pgdurable'::regnamespace"""


@pytest.fixture
def empty(empty_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        yield conn


# Functions a trigger calls: they exist from their migration on (a trigger needs its function).
TRIGGER_FUNCTIONS = ("pgdurable.child_status_changed()",)


def functions(conn: Conn) -> dict[str, tuple[str, str | None]]:
    """{signature: (pg_get_functiondef, comment)} of every function in schema pgdurable."""
    return {r["signature"]: (r["definition"], r["comment"]) for r in call(conn, FUNCTIONS)}


def drop_every_function(conn: Conn) -> None:
    """Leave the tables without functions, except pgdurable.now(), which their column defaults
    call (it loses its comment instead), and the triggers' functions, which the triggers need
    (they lose their body instead: the function files must give it back)."""
    for signature in functions(conn):
        if signature == "pgdurable.now()":
            conn.execute("comment on function pgdurable.now() is null")
        elif signature in TRIGGER_FUNCTIONS:
            conn.execute(f"comment on function {signature} is null")
            conn.execute(f"create or replace function {signature} returns trigger "
                         "language plpgsql as $$ begin return null; end $$")
        elif signature == "pgdurable.now()":
            conn.execute("comment on function pgdurable.now() is null")
        else:
            conn.execute(f"drop function {signature}")


def stamps(conn: Conn) -> dict[str, object]:
    rows = call(conn, "select name, applied_at from pgdurable.repeatables")
    return {r["name"]: r["applied_at"] for r in rows}


def recorded_functions(conn: Conn) -> dict[str, str]:
    return {r["name"]: r["sha256"]
            for r in call(conn, "select name, sha256 from pgdurable.repeatables")}


def replace_files(monkeypatch: pytest.MonkeyPatch, files: tuple[FunctionFile, ...]) -> None:
    monkeypatch.setattr(migrate, "function_files", lambda: files)


def edited(name: str, extra_sql: str) -> tuple[FunctionFile, tuple[FunctionFile, ...]]:
    """The shipped files with `extra_sql` appended to functions/<name>.sql."""
    real = migrate.function_files()
    target = next(f for f in real if f.name == name)
    changed = FunctionFile(target.name, target.sql + extra_sql)
    return changed, tuple(changed if f is target else f for f in real)


# -- what the files define --------------------------------------------------------------------


def test_each_function_is_defined_by_exactly_one_function_file(conn: Conn) -> None:
    """Each file, applied alone on tables without functions, defines its functions exactly as
    the migrated database has them; together the files define every function (none left only
    in a migration) and no function twice."""
    expected = functions(conn)
    defined_by: dict[str, list[str]] = {}
    for f in migrate.function_files():
        with conn.transaction(force_rollback=True):
            # Alone, a `language sql` body may call a function of another file.
            conn.execute("set local check_function_bodies = off")
            drop_every_function(conn)
            conn.execute(f.sql)
            for signature, value in functions(conn).items():
                if signature in ("pgdurable.now()", *TRIGGER_FUNCTIONS) and value[1] is None:
                    continue  # kept for the tables, not defined by this file
                assert value == expected.get(signature), f"{signature} in {f.filename}"
                defined_by.setdefault(signature, []).append(f.filename)
    assert sorted(set(expected) - set(defined_by)) == [], "left only in a migration"
    assert {s: files for s, files in defined_by.items() if len(files) > 1} == {}


def test_the_function_files_build_every_function_in_name_order(conn: Conn) -> None:
    """Applied in the runner's order with their bodies checked, the files need nothing but the
    tables: a `language sql` function only calls functions defined before it."""
    expected = functions(conn)
    drop_every_function(conn)
    for f in migrate.function_files():
        conn.execute(f.sql)
    assert functions(conn) == expected


def test_every_function_has_a_comment(conn: Conn) -> None:
    assert {s for s, (_, comment) in functions(conn).items() if not comment} == set()


def test_function_files_hold_only_functions_and_their_comments() -> None:
    """Tables, indexes, grants and drops belong in a numbered migration."""
    for f in migrate.function_files():
        text = re.sub(r"\$(\w*)\$.*?\$\1\$", "$$", f.sql, flags=re.DOTALL)
        text = re.sub(r"--[^\n]*", "", text)
        for statement in filter(None, (s.strip() for s in text.split(";"))):
            assert re.match(r"(create or replace|comment on) function pgdurable\.\w+\(",
                            statement), f"{f.filename}: {statement[:60]!r}"


def test_every_pd_sqlstate_raised_in_function_files_is_mapped() -> None:
    text = "\n".join(f.sql for f in migrate.function_files())
    raised = set(re.findall(r"'(PD\d{3})'", text))
    assert raised, "no PDxxx codes found in the function files"
    assert raised <= set(errors.SQLSTATE_TO_EXCEPTION)


def test_function_files_are_found_in_name_order() -> None:
    files = migrate.function_files()
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert {"core", "queues", "runs", "steps"} <= {f.name for f in files}
    for f in files:
        assert f.filename == f"functions/{f.name}.sql"
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)


# -- applying them again ----------------------------------------------------------------------


def test_an_edited_function_file_is_applied_again_alone(
    conn: Conn, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = stamps(conn)
    changed, files = edited(
        "queues", "\ncomment on function pgdurable.queue_stats() is 'edited';\n")
    replace_files(monkeypatch, files)
    with pytest.raises(SchemaError, match=r"functions/queues\.sql differs .*run `pgdurable migr"):
        migrate.check_schema(conn)
    with pgdurable.App(dsn) as app, pytest.raises(SchemaError, match="run `pgdurable migrate`"):
        app.list_workflows()
    assert migrate.migrate(conn) == Applied(functions=(changed,))
    migrate.check_schema(conn)
    assert call(conn, "select obj_description('pgdurable.queue_stats()'::regprocedure, "
                      "'pg_proc') as c")[0]["c"] == "edited"
    assert recorded_functions(conn)["functions/queues.sql"] == changed.sha256
    after = stamps(conn)
    assert after["functions/queues.sql"] != before["functions/queues.sql"]
    assert {n: t for n, t in after.items() if n != "functions/queues.sql"} == {
        n: t for n, t in before.items() if n != "functions/queues.sql"}
    assert migrate.migrate(conn) == Applied()


def test_a_new_function_file_is_required_then_applied(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = FunctionFile("zz_extra", "create or replace function pgdurable.extra() returns int\n"
                                     "language sql as $$ select 42 $$;\n")
    replace_files(monkeypatch, (*migrate.function_files(), extra))
    with pytest.raises(SchemaError, match=r"functions/zz_extra\.sql was never applied"):
        migrate.check_schema(conn)
    assert migrate.migrate(conn) == Applied(functions=(extra,))
    assert call(conn, "select pgdurable.extra() as x")[0]["x"] == 42
    migrate.check_schema(conn)


def test_a_failing_function_file_leaves_nothing_behind(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = catalog(conn)
    recorded = recorded_functions(conn)
    _, files = edited(
        "steps", "\ncomment on function pgdurable.load_steps(text, integer) is 'half';\n"
                 "select 1 / 0;\n")
    replace_files(monkeypatch, files)
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate.migrate(conn)
    assert catalog(conn) == before
    assert recorded_functions(conn) == recorded
    with pytest.raises(SchemaError, match=r"functions/steps\.sql differs"):
        migrate.check_schema(conn)


def test_a_function_file_no_longer_shipped_is_forgotten(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrate.function_files()
    replace_files(monkeypatch, tuple(f for f in real if f.name != "steps"))
    assert migrate.migrate(conn) == Applied()
    assert "functions/steps.sql" not in recorded_functions(conn)
    migrate.check_schema(conn)
    monkeypatch.undo()
    with pytest.raises(SchemaError, match=r"functions/steps\.sql was never applied"):
        migrate.check_schema(conn)
    assert migrate.migrate(conn).filenames == ["functions/steps.sql"]


def test_a_function_file_edited_in_the_record_is_refused_until_migrated(conn: Conn) -> None:
    conn.execute("update pgdurable.repeatables set sha256 = repeat('0', 64) "
                 "where name = 'functions/core.sql'")
    with pytest.raises(SchemaError, match=r"functions/core\.sql differs \(sha256 000000000000… "
                                          r"in the database"):
        migrate.check_schema(conn)
    assert migrate.migrate(conn).filenames == ["functions/core.sql"]
    migrate.check_schema(conn)


# -- a database from before the function files ------------------------------------------------


def migrate_the_old_way(conn: Conn, upto: int) -> None:
    """What the runner without function files did: each migration with its version row."""
    with conn.transaction():
        run_query(conn, "migrations_bootstrap")
    for m in migrate.available()[:upto]:
        with conn.transaction():
            conn.execute(m.sql)
            run_query(conn, "migrations_record",
                      {"version": m.version, "name": m.name, "sha256": m.sha256})


def test_a_database_from_before_the_function_files_upgrades(empty: Conn, conn: Conn) -> None:
    migrate_the_old_way(empty, BEFORE_FUNCTION_FILES)
    run = call(empty, "select pgdurable.enqueue('default', 'flow', p_id => 'old-run') as id")
    assert run == [{"id": "old-run"}]
    with pytest.raises(SchemaError, match=rf"version {BEFORE_FUNCTION_FILES}, this pgdurable "
                                          r"needs \d+: run `pgdurable migrate`"):
        migrate.check_schema(empty)
    applied = migrate.migrate(empty)
    assert applied.migrations == migrate.available()[BEFORE_FUNCTION_FILES:]
    assert applied.functions == migrate.function_files()
    migrate.check_schema(empty)
    assert catalog(empty) == catalog(conn)
    assert call(empty, "select status from pgdurable.workflows where id = 'old-run'") == [
        {"status": "pending"}]
    assert migrate.migrate(empty) == Applied()


# -- the script for other tools ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_the_script_applied_by_psql_is_accepted(empty_dsn: str, empty: Conn, conn: Conn) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", empty_dsn],
                   input=migrate.full_sql(), text=True, check=True, capture_output=True)
    migrate.check_schema(empty)
    assert migrate.migrate(empty) == Applied()
    assert catalog(empty) == catalog(conn)
