"""Migration runner: numbered SQL files (sql/migrations/, shipped in the wheel), applied in order.

Each migration runs in its own transaction together with its row in `pgdurable.migrations`
(version, name, sha256), under a blocking transaction-scoped advisory lock, so concurrent
`migrate` calls queue up instead of racing. The sha256 of every applied migration is checked on
every run: editing an applied migration is an error, not a silent divergence.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg

from pgdurable.core.errors import SchemaError
from pgdurable.store.database import run_query
from pgdurable.store.sql import query, sql_dir

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


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


def latest_version() -> int:
    return available()[-1].version


def full_sql() -> str:
    """All migrations as one script, for teams that apply SQL with their own tool. It also
    creates `pgdurable.migrations` and records each version, so pgdurable accepts the result
    and a later `pgdurable migrate` continues from it."""
    bootstrap = query("migrations_bootstrap")
    parts = [f"-- pgdurable schema, version {latest_version()}\n{bootstrap};\n"]
    for m in available():
        parts.append(
            f"-- {m.filename} (sha256 {m.sha256})\n{m.sql.rstrip()}\n"
            f"insert into pgdurable.migrations (version, name, sha256) "
            f"values ({m.version}, '{m.name}', '{m.sha256}') on conflict do nothing;\n"
        )
    return "\n".join(parts)


def _applied(conn: psycopg.Connection[Any]) -> dict[int, str]:
    return {row["version"]: row["sha256"] for row in run_query(conn, "migrations_applied")}


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


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply every pending migration. Returns those applied (empty when up to date).

    `conn` must be in autocommit mode; each migration gets its own transaction.
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    with conn.transaction():
        run_query(conn, "migrations_lock")
        run_query(conn, "migrations_bootstrap")
        _verify(_applied(conn))
    done: list[Migration] = []
    for migration in available():
        with conn.transaction():
            run_query(conn, "migrations_lock")
            applied = _applied(conn)
            if migration.version in applied:
                continue
            conn.execute(migration.sql)
            run_query(
                conn,
                "migrations_record",
                {"version": migration.version, "name": migration.name, "sha256": migration.sha256},
            )
        done.append(migration)
    return done


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Refuse a database that is not migrated, behind, ahead, or has edited migrations."""
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
