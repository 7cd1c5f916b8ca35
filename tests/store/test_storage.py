"""What `serde` encodes must survive a jsonb column unchanged, and what jsonb cannot store must
be refused at the call site."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

import pgdurable
from pgdurable.core.serde import Signature
from pgdurable.errors import SerializationError
from tests.support.sql import Conn, call

# jsonb refuses U+0000 in strings (see test_jsonb_refuses_nul below), so the property leaves it out
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
# Untyped (Any) floats stay below 1e16: Python writes larger ones in exponent form, jsonb stores
# them as numeric and prints them without one, so they come back as ints (typed floats are fine).
JSON_LEAVES = (st.none() | st.booleans() | st.integers() | TEXT
               | st.floats(min_value=-1e15, max_value=1e15))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def target(
    numbers: list[int], label: str, ratio: float, tags: dict[str, bool | None], when: datetime,
    *rest: int, payload: Any = None,
) -> None: ...


SIG = Signature(target, "workflow 'target'")


def through_jsonb(conn: Conn, value: Any) -> Any:
    return call(conn, "select %s::jsonb as v", (Jsonb(value),))[0]["v"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    numbers=st.lists(st.integers(), max_size=5),
    label=TEXT,
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    tags=st.dictionaries(TEXT, st.booleans() | st.none(), max_size=3),
    when=st.datetimes(timezones=st.just(UTC)),
    rest=st.lists(st.integers(-(2**70), 2**70), max_size=3),
    payload=JSON_VALUES,
)
def test_encoded_arguments_round_trip_through_jsonb(
    conn: Conn, numbers: list[int], label: str, ratio: float, tags: dict[str, bool | None],
    when: datetime, rest: list[int], payload: Any,
) -> None:
    encoded = SIG.encode_args((numbers, label, ratio, tags, when, *rest), {"payload": payload})
    stored = through_jsonb(conn, encoded)
    args, kwargs = SIG.decode_args(stored)
    assert args == (numbers, label, ratio, tags, when, *rest)
    assert kwargs == {"payload": payload}
    assert math.copysign(1, args[2]) == math.copysign(1, ratio) or ratio == 0


def test_jsonb_refuses_nul(conn: Conn) -> None:
    with pytest.raises(Exception, match="cannot be converted to text"):
        through_jsonb(conn, ["a\x00b"])


def _count(conn: Conn) -> int:
    return int(call(conn, "select count(*) as n from pgdurable.workflows")[0]["n"])


def test_a_nul_character_in_an_argument_is_a_serialization_error(
    app: pgdurable.App, conn: Conn
) -> None:
    @app.workflow(name="echo")
    def echo(text: str) -> str:
        return text

    try:
        with pytest.raises(SerializationError, match="text"):
            app.start(echo, "a\x00b", workflow_id="nul")
    finally:
        assert _count(conn) == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_float_argument_is_a_serialization_error(
    app: pgdurable.App, conn: Conn, value: float
) -> None:
    @app.workflow(name="half")
    def half(x: float) -> float:
        return x / 2

    try:
        with pytest.raises(SerializationError, match="'x'"):
            app.start(half, value, workflow_id="nan")
    finally:
        assert _count(conn) == 0


def test_bad_arguments_write_nothing(app: pgdurable.App, conn: Conn) -> None:
    @app.workflow(name="typed")
    def typed(n: int, when: datetime) -> int:
        return n

    with pytest.raises(SerializationError, match="'n'"):
        app.start(typed, "not a number", datetime.now(UTC), workflow_id="bad")
    with pytest.raises(SerializationError, match="'when'"):
        app.start(typed, 1, object(), workflow_id="bad")
    with pytest.raises(SerializationError, match="typed"):
        app.start(typed, 1, workflow_id="bad")  # missing argument
    assert _count(conn) == 0
