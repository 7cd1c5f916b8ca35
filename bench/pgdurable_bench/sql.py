"""The SQL of `pgdurable bench`, in bench.sql beside this module (format of sql/queries.sql)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import LiteralString

from pgdurable.store.sql import parse


@cache
def _all() -> dict[str, LiteralString]:
    return parse(resources.files("pgdurable_bench").joinpath("bench.sql").read_text("utf-8"))


def sql(name: str) -> LiteralString:
    """The bench statement called `name`."""
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in pgdurable_bench/bench.sql") from None
