"""serde: annotation-driven JSON encoding of arguments and results, and error records."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgdurable.core.serde import Signature, error_record, rebuild_exception
from pgdurable.errors import SerializationError, StepFailed


class Item(pydantic.BaseModel):
    sku: str
    qty: int = 1


@dataclass
class Point:
    x: float
    y: float


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class CustomError(Exception):
    """A user exception defined at module level: importable by its recorded name."""


class TwoArgError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code


# jsonb holds any text but NUL (serde refuses NUL with a SerializationError, tested elsewhere).
JSONB_TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00"))


def round_trip(fn: Any, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], tuple[Any, ...],
                                                              dict[str, Any]]:
    """Encode a call, push it through real JSON text, decode it."""
    sig = Signature(fn, f"workflow {fn.__name__!r}")
    encoded = sig.encode_args(args, kwargs)
    stored = json.loads(json.dumps(encoded))
    got_args, got_kwargs = sig.decode_args(stored)
    return encoded, got_args, got_kwargs


# -- arguments --------------------------------------------------------------------------------


def test_scalars_round_trip() -> None:
    def f(n: int, s: str, ok: bool, ratio: float, nothing: None) -> None: ...

    encoded, args, kwargs = round_trip(f, 3, "é ☃ \t", True, 0.1, None)
    assert encoded == {"args": [3, "é ☃ \t", True, 0.1, None], "kwargs": {}}
    assert args == (3, "é ☃ \t", True, 0.1, None)
    assert kwargs == {}


def test_a_tz_aware_datetime_round_trips_with_its_offset() -> None:
    def f(when: datetime, day: date, wait: timedelta) -> None: ...

    plus2 = timezone(timedelta(hours=2))
    when = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=plus2)
    encoded, args, _ = round_trip(f, when, date(2030, 1, 2), timedelta(seconds=90))
    assert isinstance(encoded["args"][0], str)
    assert args[0] == when
    assert args[0].utcoffset() == timedelta(hours=2)
    assert args[1:] == (date(2030, 1, 2), timedelta(seconds=90))


def test_uuid_decimal_and_enum_round_trip() -> None:
    def f(key: uuid.UUID, amount: Decimal, color: Color) -> None: ...

    key = uuid.uuid4()
    encoded, args, _ = round_trip(f, key, Decimal("10.10"), Color.BLUE)
    assert encoded["args"] == [str(key), "10.10", "blue"]
    assert args == (key, Decimal("10.10"), Color.BLUE)
    assert str(args[1]) == "10.10"  # exact, not a float


def test_models_and_dataclasses_round_trip() -> None:
    def f(item: Item, where: Point, items: list[Item], by_name: dict[str, Item]) -> None: ...

    items = [Item(sku="a"), Item(sku="b", qty=3)]
    encoded, args, _ = round_trip(f, Item(sku="x", qty=2), Point(1.5, -2.0), items,
                                  {"k": Item(sku="k")})
    assert encoded["args"][0] == {"sku": "x", "qty": 2}
    assert encoded["args"][1] == {"x": 1.5, "y": -2.0}
    assert args == (Item(sku="x", qty=2), Point(1.5, -2.0), items, {"k": Item(sku="k")})
    assert isinstance(args[2][1], Item)


def test_optional_arguments() -> None:
    def f(a: int | None, b: Item | None = None) -> None: ...

    assert round_trip(f, None)[1] == (None,)
    assert round_trip(f, 5, Item(sku="z"))[1] == (5, Item(sku="z"))
    assert round_trip(f, 5, b=None)[1:] == ((5, None), {})


def test_varargs_and_var_keywords() -> None:
    def f(first: str, *rest: int, **named: Item) -> None: ...

    encoded, args, kwargs = round_trip(f, "a", 1, 2, 3, x=Item(sku="x"), y=Item(sku="y", qty=9))
    assert encoded == {"args": ["a", 1, 2, 3],
                       "kwargs": {"x": {"sku": "x", "qty": 1}, "y": {"sku": "y", "qty": 9}}}
    assert args == ("a", 1, 2, 3)
    assert kwargs == {"x": Item(sku="x"), "y": Item(sku="y", qty=9)}


def test_keyword_only_and_positional_only() -> None:
    def f(p: int, /, q: str, *, flag: bool = False, when: datetime | None = None) -> None: ...

    when = datetime(2030, 1, 1, tzinfo=UTC)
    encoded, args, kwargs = round_trip(f, 1, q="x", when=when)
    assert encoded["kwargs"] == {"when": "2030-01-01T00:00:00Z"}
    assert args == (1, "x")
    assert kwargs == {"when": when}
    # defaults that were not passed are not stored (the function's default applies on replay)
    assert "flag" not in encoded["kwargs"]


def test_values_are_validated_and_coerced_at_encode_time() -> None:
    def f(n: int, items: list[Item]) -> None: ...

    encoded, args, _ = round_trip(f, "7", [{"sku": "d"}])
    assert encoded["args"] == [7, [{"sku": "d", "qty": 1}]]
    assert args == (7, [Item(sku="d")])


def test_unannotated_parameters_are_stored_as_plain_json() -> None:
    def f(anything, other: Any) -> None:  # type: ignore[no-untyped-def]
        ...

    encoded, args, _ = round_trip(f, {"a": [1, 2]}, (1, "x"))
    assert args == ({"a": [1, 2]}, [1, "x"])  # a tuple comes back as a list without a type
    assert encoded["args"][1] == [1, "x"]


def test_transaction_signature_skips_the_connection() -> None:
    def txn(conn: object, order_id: int) -> int:
        raise NotImplementedError

    sig = Signature(txn, "transaction 'txn'", skip_first=True)
    assert sig.encode_args((5,), {}) == {"args": [5], "kwargs": {}}
    assert sig.decode_args({"args": [5], "kwargs": {}}) == ((5,), {})
    with pytest.raises(SerializationError, match="bad arguments for transaction 'txn'"):
        sig.encode_args((object(), 5), {})


@given(
    numbers=st.lists(st.integers()),
    text=JSONB_TEXT,
    nested=st.lists(st.lists(st.integers() | JSONB_TEXT, max_size=3), max_size=3),
    named=st.dictionaries(st.text(min_size=1).filter(str.isidentifier), st.integers(),
                          max_size=3),
)
def test_property_json_round_trip(numbers: list[int], text: str,
                                  nested: list[list[int | str]], named: dict[str, int]) -> None:
    def f(numbers: list[int], text: str, nested: list[list[int | str]], **named: int) -> None: ...

    if set(named) & {"numbers", "text", "nested"}:
        return
    _, args, kwargs = round_trip(f, numbers, text, nested, **named)
    assert args == (numbers, text, nested)
    assert kwargs == named


@given(st.lists(st.integers() | JSONB_TEXT | st.booleans() | st.none(), max_size=6))
def test_property_results_round_trip(value: list[int | str | bool | None]) -> None:
    def f() -> list[int | str | bool | None]:
        raise NotImplementedError

    sig = Signature(f, "step 'f'")
    assert sig.decode_result(json.loads(json.dumps(sig.encode_result(value)))) == value


# -- results ----------------------------------------------------------------------------------


def test_results_are_decoded_to_the_return_annotation() -> None:
    def f() -> list[Item]:
        raise NotImplementedError

    sig = Signature(f, "step 'f'")
    data = sig.encode_result([Item(sku="a", qty=2)])
    assert data == [{"sku": "a", "qty": 2}]
    assert sig.decode_result(data) == [Item(sku="a", qty=2)]

    def g() -> None: ...

    sig_g = Signature(g, "step 'g'")
    assert sig_g.encode_result(None) is None
    assert sig_g.decode_result(None) is None


def test_a_wrong_return_value_is_a_serialization_error() -> None:
    def f() -> int:
        raise NotImplementedError

    sig = Signature(f, "step 'f'")
    with pytest.raises(SerializationError, match="the return value of step 'f' is not a valid"):
        sig.encode_result("not an int")
    with pytest.raises(SerializationError, match="stored the return value of step 'f'"):
        sig.decode_result({"a": 1})


# -- refused values ---------------------------------------------------------------------------


def _f(plain: Any, items: set[int], *rest: Any, **named: Any) -> None: ...


SIG = Signature(_f, "workflow 'f'")


@pytest.mark.parametrize(
    ("args", "kwargs", "argument"),
    [
        ((object(), {1}), {}, "plain"),
        ((lambda: 1, {1}), {}, "plain"),
        (({object(), object()}, {1}), {}, "plain"),
        ((1, {1}, 2, object()), {}, "rest"),
        ((1, {1}), {"k": {1, object()}}, "named"),
        ((1, {"x"}), {}, "items"),
    ],
)
def test_values_that_cannot_be_stored_name_the_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(SerializationError) as info:
        SIG.encode_args(args, kwargs)
    assert f"argument {argument!r} of workflow 'f'" in str(info.value)
    assert isinstance(info.value, TypeError)  # SerializationError is also a TypeError


class Opaque:
    """A plain class: pydantic has no schema for it."""


def test_a_type_pydantic_cannot_describe_is_refused() -> None:
    def f(thing: Opaque) -> None: ...

    with pytest.raises(SerializationError, match="cannot be stored as JSON"):
        Signature(f, "step 'f'").encode_args((Opaque(),), {})


def test_an_unresolvable_annotation_is_reported() -> None:
    def f(x: int) -> None: ...

    f.__annotations__ = {"x": "NoSuchType", "return": "None"}
    with pytest.raises(SerializationError, match="cannot resolve the type annotations of step"):
        Signature(f, "step 'f'").encode_args((1,), {})


def test_wrong_call_shapes_are_refused() -> None:
    def f(a: int, *, b: int) -> None: ...

    sig = Signature(f, "workflow 'f'")
    with pytest.raises(SerializationError, match="bad arguments for workflow 'f'"):
        sig.encode_args((1, 2), {"b": 3})
    with pytest.raises(SerializationError, match="bad arguments"):
        sig.encode_args((1,), {})
    with pytest.raises(SerializationError, match="stored inputs do not fit workflow 'f'"):
        sig.decode_args({"args": [1], "kwargs": {"b": 1, "c": 2}})
    with pytest.raises(SerializationError, match="stored argument 'a' of workflow 'f'"):
        sig.decode_args({"args": ["x"], "kwargs": {"b": 1}})


# -- error records ----------------------------------------------------------------------------


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_builtin_error_round_trips() -> None:
    record = error_record(_raised(ValueError("bad value", 3)))
    assert record["type"] == "ValueError"
    assert record["message"] == "('bad value', 3)"
    assert record["args"] == ["bad value", 3]
    assert "ValueError" in record["traceback"] and "_raised" in record["traceback"]
    json.dumps(record)
    rebuilt = rebuild_exception(json.loads(json.dumps(record)))
    assert type(rebuilt) is ValueError
    assert rebuilt.args == ("bad value", 3)


def test_key_error_keeps_its_key() -> None:
    rebuilt = rebuild_exception(error_record(KeyError("k")))
    assert type(rebuilt) is KeyError and rebuilt.args == ("k",)


def test_a_custom_exception_in_a_module_round_trips() -> None:
    record = error_record(_raised(CustomError("custom")))
    assert record["type"] == f"{__name__}.CustomError"
    rebuilt = rebuild_exception(record)
    assert type(rebuilt) is CustomError
    assert str(rebuilt) == "custom"


def test_non_json_args_fall_back_to_the_message() -> None:
    record = error_record(RuntimeError(object()))
    assert "args" not in record
    json.dumps(record)
    rebuilt = rebuild_exception(record)
    assert type(rebuilt) is RuntimeError
    assert str(rebuilt).startswith("<object object")


def test_an_exception_with_another_constructor_keeps_its_type() -> None:
    record = error_record(TwoArgError(404, "missing"))
    rebuilt = rebuild_exception(record)
    assert type(rebuilt) is TwoArgError
    assert str(rebuilt) == "404: missing"


@pytest.mark.parametrize(
    "type_name",
    ["no_such_module.Error", "NoSuchBuiltin", "json.dumps", "os", "", "SystemExit",
     "KeyboardInterrupt", "GeneratorExit"],
)
def test_unknown_or_unsafe_types_become_step_failed(type_name: str) -> None:
    rebuilt = rebuild_exception({"type": type_name, "message": "m"})
    assert isinstance(rebuilt, StepFailed)
    assert rebuilt.message == "m"


def test_a_record_without_args_uses_its_message() -> None:
    rebuilt = rebuild_exception({"type": "ZeroDivisionError", "message": "division by zero"})
    assert type(rebuilt) is ZeroDivisionError and str(rebuilt) == "division by zero"


def test_the_traceback_includes_the_cause() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as exc:
        record = error_record(exc)
    assert "KeyError: 'inner'" in record["traceback"]
    assert "direct cause" in record["traceback"]


class Outer:
    class NestedError(Exception):
        pass


def test_a_nested_exception_class_round_trips() -> None:
    rebuilt = rebuild_exception(error_record(Outer.NestedError("nested")))
    assert type(rebuilt) is Outer.NestedError


# -- the positional fast path -------------------------------------------------------------------


def _slow_encode(sig: Signature, args: tuple[Any, ...]) -> dict[str, Any]:
    """The general (bind-then-validate) path, for comparison with the fast one."""
    bound = sig._bind_signature.bind(*args)
    return {"args": [sig._encode_arg(name, value) for name, value in bound.arguments.items()],
            "kwargs": {}}


@given(st.tuples(JSONB_TEXT, st.integers(), st.booleans(), st.integers() | JSONB_TEXT,
                 st.floats(allow_nan=False, allow_infinity=False)))
def test_positional_calls_encode_as_the_general_path_does(values: tuple[Any, ...]) -> None:
    def f(s: str, n: int, b: bool, any_: Any, x: float) -> None: ...

    sig = Signature(f, "workflow 'f'")
    assert sig.encode_args(values, {}) == _slow_encode(sig, values)


def test_the_fast_path_still_coerces_and_refuses_like_pydantic() -> None:
    def f(n: int, s: str) -> None: ...

    sig = Signature(f, "workflow 'f'")
    assert sig.encode_args(("7", "x"), {}) == {"args": [7, "x"], "kwargs": {}}  # coerced
    assert sig.encode_args((True, "x"), {}) == {"args": [1, "x"], "kwargs": {}}  # bool is not int
    with pytest.raises(SerializationError, match="NUL"):
        sig.encode_args((1, "a\x00b"), {})
    with pytest.raises(SerializationError, match="argument 'n' of workflow 'f'"):
        sig.encode_args(("seven", "x"), {})
    with pytest.raises(SerializationError, match="bad arguments"):
        sig.encode_args((1, "x", 3), {})
