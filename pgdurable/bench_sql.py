"""The SQL of `pgdurable bench`, kept in sql/bench.sql (same format as sql/queries.sql)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import LiteralString

from pgdurable.queries import parse


@cache
def _all() -> dict[str, LiteralString]:
    return parse(resources.files("pgdurable").joinpath("sql/bench.sql").read_text("utf-8"))


def sql(name: str) -> LiteralString:
    """The bench statement called `name`."""
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/bench.sql") from None
