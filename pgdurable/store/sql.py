"""Where the SQL files are, and the named statements of sql/queries.sql, loaded once.

SQL lives in .sql files; Python refers to a statement by name. A block starts with a
`-- name: <name>` line and runs until the next one.

The files live in the project's top-level `sql/` folder: `queries.sql`, the versioned
`migrations/` and the repeatable `functions/` (see store/migrate.py). A wheel ships that folder
as `pgdurable/sql` (see pyproject.toml); a source checkout or an editable install reads the
live files in `sql/` beside the package, so an edit is seen without reinstalling.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import LiteralString, cast

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, LiteralString]:
    """Split a queries file into {name: statement}."""
    parts = _NAME.split(text)
    queries: dict[str, LiteralString] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = cast(LiteralString, body.strip())
    return queries


@cache
def sql_dir() -> Traversable:
    """The folder holding queries.sql, migrations/ and functions/: inside the installed package
    (a wheel), else the top-level sql/ of the source tree this package was imported from."""
    shipped = resources.files("pgdurable").joinpath("sql")
    if shipped.is_dir():
        return shipped
    source = Path(__file__).resolve().parents[2] / "sql"
    if source.is_dir():
        return source
    raise FileNotFoundError(f"pgdurable's SQL files are missing (looked in {shipped} and {source})")


@cache
def all_queries() -> dict[str, LiteralString]:
    return parse(sql_dir().joinpath("queries.sql").read_text("utf-8"))


def query(name: str) -> LiteralString:
    """The statement called `name` (KeyError names the missing query)."""
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries.sql") from None
