"""serde.as_stored gives what a jsonb round trip gives: the value a step returns to its
workflow without reading its checkpoint back must be what a replay reads."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from pgdurable.core.serde import as_stored

# Text jsonb can hold: no NUL, no lone surrogates (which JSON text cannot carry either).
TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
EDGES: list[Any] = [-0.0, 1e16, 1.5e16, 1e-5, 100.0, 1.2345678901234567e20, 5e-324,
                    1.7976931348623157e308, 2**70, {"bb": 1, "a": 2, "é": 3, "z": 4},
                    {"ab": {"y": 1, "x": [0.1, -1e22]}}]


def _through_jsonb(conn: psycopg.Connection[Any], value: Any) -> Any:
    row = conn.execute("select %s::jsonb", (Jsonb(value),)).fetchone()
    assert row is not None
    return row[0]


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same key order and the same int/float types throughout."""
    return json.dumps(a) == json.dumps(b) and _types(a) == _types(b)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, _types(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


def test_edge_values(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        for value in EDGES:
            assert _same(as_stored(value), _through_jsonb(conn, value)), value


# The database is only read: sharing it between examples is fine.
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(JSON_VALUES)
def test_any_json_value(dsn: str, value: Any) -> None:
    with psycopg.connect(dsn) as conn:
        assert _same(as_stored(value), _through_jsonb(conn, value))
