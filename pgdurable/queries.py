"""The named SQL statements of sql/queries.sql, loaded once.

SQL lives in .sql files; Python refers to a statement by name. A block starts with a
`-- name: <name>` line and runs until the next one.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
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
def all_queries() -> dict[str, LiteralString]:
    text = resources.files("pgdurable").joinpath("sql/queries.sql").read_text("utf-8")
    return parse(text)


def query(name: str) -> LiteralString:
    """The statement called `name` (KeyError names the missing query)."""
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries.sql") from None
