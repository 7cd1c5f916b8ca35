"""Where the database is: one resolution order for the library, the CLI and the tests."""

from __future__ import annotations

import os

DSN_ENV = "PGDURABLE_DSN"

# libpq reads these itself; any of them set means "the user configured a server".
_LIBPQ_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: the argument, else PGDURABLE_DSN, else libpq's PG* variables (returned as
    an empty conninfo that libpq completes), else the embedded server (started if needed)."""
    if dsn:
        return dsn
    from_env = os.environ.get(DSN_ENV)
    if from_env:
        return from_env
    if any(os.environ.get(var) for var in _LIBPQ_VARS):
        return ""
    from pgdurable.dev import embedded

    return embedded.ensure_running()
