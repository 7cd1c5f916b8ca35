"""Migration runner: versioned migrations, then the repeatable function files.

Two kinds of SQL file build the schema (both shipped in the wheel, see store/sql.py):

- `sql/migrations/NNNN_name.sql`, versioned: each is applied once, in order, in its own
  transaction together with its row in `pgdurable.migrations` (version, name, sha256). The
  sha256 of every applied migration is checked on every run: editing an applied migration is an
  error, not a silent divergence. Tables, indexes and data changes go here.
- `sql/functions/<domain>.sql`, repeatable: the current `create or replace function` (and
  `comment on function`) of every function, one file per domain. After the migrations, each file
  whose sha256 differs from the one recorded in `pgdurable.repeatables` is applied again, in
  name order, each in its own transaction with its record. A function change edits its file.

Everything runs under one blocking transaction-scoped advisory lock, taken again by each
transaction, so concurrent `migrate` calls queue up instead of racing. `check_schema` refuses a
database that is behind, ahead, has edited migrations or function files that are not current.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from pgdurable.core.errors import SchemaError
from pgdurable.store.database import run_query
from pgdurable.store.sql import query, sql_dir

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_FUNCTION_FILE = re.compile(r"^(\w+)\.sql$")
_PARAM = re.compile(r"%\((\w+)\)s")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Migration:
    """A versioned migration, `sql/migrations/NNNN_name.sql`: applied once."""

    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def sha256(self) -> str:
        return _sha256(self.sql)


@dataclass(frozen=True)
class FunctionFile:
    """A repeatable file, `sql/functions/<name>.sql`: applied again whenever its text changes."""

    name: str
    sql: str

    @property
    def filename(self) -> str:
        """Its path below sql/, as printed and as recorded in `pgdurable.repeatables`."""
        return f"functions/{self.name}.sql"

    @property
    def sha256(self) -> str:
        return _sha256(self.sql)


@dataclass(frozen=True)
class Applied:
    """What one `migrate` call applied: migrations in version order, then function files."""

    migrations: tuple[Migration, ...] = ()
    functions: tuple[FunctionFile, ...] = ()

    @property
    def filenames(self) -> list[str]:
        return [m.filename for m in self.migrations] + [f.filename for f in self.functions]

    def __bool__(self) -> bool:
        return bool(self.migrations or self.functions)


@cache
def available() -> tuple[Migration, ...]:
    """The migrations shipped with this version of pgdurable, in order."""
    folder = sql_dir().joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return tuple(found)


@cache
def function_files() -> tuple[FunctionFile, ...]:
    """The function files shipped with this version of pgdurable, in the order they are applied
    (by name)."""
    folder = sql_dir().joinpath("functions")
    found = [FunctionFile(match[1], entry.read_text("utf-8"))
             for entry in folder.iterdir() if (match := _FUNCTION_FILE.match(entry.name))]
    return tuple(sorted(found, key=lambda f: f.name))


def latest_version() -> int:
    return available()[-1].version


def _literal_query(name: str, params: Mapping[str, object]) -> str:
    """A named query with its parameters inlined as SQL literals, for a script."""
    return _PARAM.sub(lambda m: sql.Literal(params[m[1]]).as_string(None), query(name))


def full_sql() -> str:
    """The migrations, then the function files, as one script for teams that apply SQL with
    their own tool. It also creates `pgdurable.migrations` and records each migration and each
    function file, so pgdurable accepts the result and a later `pgdurable migrate` continues
    from it."""
    functions = function_files()
    bootstrap = query("migrations_bootstrap")
    parts = [f"-- pgdurable schema, version {latest_version()}, "
             f"{len(functions)} function files\n{bootstrap};\n"]
    for m in available():
        record = _literal_query(
            "migrations_record", {"version": m.version, "name": m.name, "sha256": m.sha256})
        parts.append(f"-- {m.filename} (sha256 {m.sha256})\n{m.sql.rstrip()}\n{record};\n")
    for f in functions:
        record = _literal_query("repeatables_record", {"name": f.filename, "sha256": f.sha256})
        parts.append(f"-- {f.filename} (sha256 {f.sha256})\n{f.sql.rstrip()}\n{record};\n")
    return "\n".join(parts)


def _applied(conn: psycopg.Connection[Any]) -> dict[int, str]:
    return {row["version"]: row["sha256"] for row in run_query(conn, "migrations_applied")}


def _applied_functions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {row["name"]: row["sha256"] for row in run_query(conn, "repeatables_applied")}


def _verify(applied: dict[int, str]) -> None:
    shipped = {m.version: m for m in available()}
    for version, sha in sorted(applied.items()):
        migration = shipped.get(version)
        if migration is None:
            raise SchemaError(
                f"the database has migration {version}, newer than this pgdurable knows "
                f"(latest {latest_version()}): upgrade pgdurable"
            )
        if migration.sha256 != sha:
            raise SchemaError(
                f"migration {migration.filename} was edited after it was applied "
                f"(sha256 {sha[:12]}… in the database, {migration.sha256[:12]}… in the file): "
                "restore the file and put the change in a new migration"
            )


def _stale(recorded: dict[str, str]) -> list[str]:
    """How each shipped function file that is not current in the database differs."""
    stale = []
    for f in function_files():
        sha = recorded.get(f.filename)
        if sha is None:
            stale.append(f"{f.filename} was never applied")
        elif sha != f.sha256:
            stale.append(f"{f.filename} differs (sha256 {sha[:12]}… in the database, "
                         f"{f.sha256[:12]}… in the file)")
    return stale


def migrate(conn: psycopg.Connection[Any]) -> Applied:
    """Apply every pending migration, then every function file that is not current. Returns
    what was applied (empty, and false, when the database was up to date).

    `conn` must be in autocommit mode; each migration and each function file gets its own
    transaction.
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    with conn.transaction():
        run_query(conn, "migrations_lock")
        run_query(conn, "migrations_bootstrap")
        _verify(_applied(conn))
    migrations: list[Migration] = []
    for migration in available():
        with conn.transaction():
            run_query(conn, "migrations_lock")
            if migration.version in _applied(conn):
                continue
            conn.execute(migration.sql)
            run_query(
                conn,
                "migrations_record",
                {"version": migration.version, "name": migration.name, "sha256": migration.sha256},
            )
        migrations.append(migration)
    functions: list[FunctionFile] = []
    for f in function_files():
        with conn.transaction():
            run_query(conn, "migrations_lock")
            if _applied_functions(conn).get(f.filename) == f.sha256:
                continue
            conn.execute(f.sql)
            run_query(conn, "repeatables_record", {"name": f.filename, "sha256": f.sha256})
        functions.append(f)
    shipped = [f.filename for f in function_files()]
    with conn.transaction():
        run_query(conn, "migrations_lock")
        if set(_applied_functions(conn)) - set(shipped):  # a file renamed or removed
            run_query(conn, "repeatables_forget", {"names": shipped})
    return Applied(tuple(migrations), tuple(functions))


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Refuse a database that is not migrated, behind, ahead, has edited migrations, or whose
    function files are not the current ones."""
    present = run_query(conn, "migrations_table_exists")[0]["present"]
    version = run_query(conn, "schema_version")[0]["version"] if present else 0
    latest = latest_version()
    if version == 0:
        raise SchemaError("the database has no pgdurable schema: run `pgdurable migrate` first")
    if version > latest:
        raise SchemaError(
            f"the database schema is version {version}, newer than this pgdurable supports "
            f"({latest}): upgrade pgdurable"
        )
    if version < latest:
        raise SchemaError(
            f"the database schema is version {version}, this pgdurable needs {latest}: "
            "run `pgdurable migrate`"
        )
    _verify(_applied(conn))
    stale = _stale(_applied_functions(conn))
    if stale:
        raise SchemaError(
            f"the database's SQL functions are not this pgdurable's ({'; '.join(stale)}): "
            "run `pgdurable migrate`"
        )
